//! Thumbnails of image uploads (feature `thumbnail`): JPEG previews no larger
//! than `max_side` on either side, made with the `image` crate.

use std::io::{BufReader, Cursor};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, ImageReader, Limits};
use xferkit_core::{Error, Result, Thumbnailer};

/// Image types thumbnails are made for.
pub const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/webp", "image/gif"];

/// Makes JPEG thumbnails with the `image` crate.
#[derive(Debug, Clone)]
pub struct ImageThumbnailer {
    max_side: u32,
    max_pixels: u64,
}

impl ImageThumbnailer {
    /// Thumbnails at most `max_side` pixels on their longest side, of images
    /// with at most `max_pixels` pixels.
    pub fn new(max_side: u32, max_pixels: u64) -> Self {
        ImageThumbnailer {
            max_side: max_side.max(1),
            max_pixels,
        }
    }

    /// The JPEG thumbnail of the image at `path`.
    pub fn make(&self, path: &Path) -> Result<Vec<u8>> {
        let shown = path.display().to_string();
        let bad = |what: &str, e: image::ImageError| {
            Error::backend(&shown, format!("no thumbnail: {what}"), e)
        };
        let file = std::fs::File::open(path).map_err(|e| Error::from_io(&shown, e))?;
        let reader = ImageReader::new(BufReader::new(file))
            .with_guessed_format()
            .map_err(|e| Error::from_io(&shown, e))?;
        match reader.format() {
            Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif) => {}
            _ => {
                return Err(Error::backend(
                    &shown,
                    "no thumbnail: not a JPEG, PNG, WebP or GIF image",
                    "unknown image format",
                ));
            }
        }
        let (w, h) = reader
            .into_dimensions()
            .map_err(|e| bad("cannot read the image size", e))?;
        if u64::from(w) * u64::from(h) > self.max_pixels {
            return Err(Error::backend(
                &shown,
                format!(
                    "no thumbnail: the image is {w}x{h} pixels, over the limit of {} \
                     (thumbnail.max_pixels)",
                    self.max_pixels
                ),
                "image too large",
            ));
        }
        // Reopen: `into_dimensions` consumed the reader.
        let file = std::fs::File::open(path).map_err(|e| Error::from_io(&shown, e))?;
        let mut reader = ImageReader::new(BufReader::new(file))
            .with_guessed_format()
            .map_err(|e| Error::from_io(&shown, e))?;
        let mut limits = Limits::default();
        limits.max_image_width = Some(w);
        limits.max_image_height = Some(h);
        // Decoded RGBA plus the decoder's own buffers.
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8).max(64 << 20));
        reader.limits(limits);
        let img = reader
            .decode()
            .map_err(|e| bad("cannot decode the image", e))?;
        let thumb = img.thumbnail(self.max_side, self.max_side).to_rgb8();
        let mut out = Cursor::new(Vec::new());
        JpegEncoder::new_with_quality(&mut out, 80)
            .encode_image(&thumb)
            .map_err(|e| bad("cannot encode the JPEG", e))?;
        Ok(out.into_inner())
    }
}

impl Thumbnailer for ImageThumbnailer {
    fn thumbnail(&self, path: &Path, content_type: &str) -> Option<Result<Vec<u8>>> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        IMAGE_TYPES
            .contains(&essence.to_ascii_lowercase().as_str())
            .then(|| self.make(path))
    }
}
