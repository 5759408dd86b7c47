//! Thumbnails of image uploads (feature `thumbnail`): JPEG previews no larger
//! than `max_side` on either side, made with the `image` crate.

use std::io::{BufReader, Cursor};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, ImageReader, Limits};
use xferkit_core::{Error, Result};
use xferkit_share::Thumbnailer;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        })
    }

    #[test]
    fn every_supported_format_gives_a_decodable_jpeg_within_max_side() {
        let dir = tempfile::tempdir().unwrap();
        let t = ImageThumbnailer::new(64, 10_000_000);
        for (name, ct) in [
            ("a.png", "image/png"),
            ("a.jpg", "image/jpeg"),
            ("a.gif", "image/gif"),
            ("a.webp", "image/webp"),
        ] {
            let p = dir.path().join(name);
            gradient(300, 120).save(&p).unwrap();
            let jpeg = t.thumbnail(&p, ct).unwrap().unwrap();
            let img = image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg).unwrap();
            assert_eq!((img.width(), img.height()), (64, 26), "{name}");
        }
    }

    #[test]
    fn non_images_get_no_thumbnail_and_bad_images_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let t = ImageThumbnailer::new(64, 10_000_000);
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, "hello").unwrap();
        assert!(t.thumbnail(&p, "text/plain").is_none());

        let fake = dir.path().join("fake.png");
        std::fs::write(&fake, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
        let e = t.thumbnail(&fake, "image/png").unwrap().unwrap_err();
        assert!(
            e.to_string().contains("fake.png") && e.to_string().contains("no thumbnail"),
            "{e}"
        );

        let text_as_png = dir.path().join("text.png");
        std::fs::write(&text_as_png, "plain text").unwrap();
        let e = t.thumbnail(&text_as_png, "image/png").unwrap().unwrap_err();
        assert!(
            e.to_string().contains("not a JPEG, PNG, WebP or GIF"),
            "{e}"
        );
    }

    #[test]
    fn images_over_the_pixel_limit_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.png");
        gradient(400, 300).save(&p).unwrap();
        let e = ImageThumbnailer::new(64, 100_000)
            .make(&p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("400x300") && e.contains("thumbnail.max_pixels"),
            "{e}"
        );
    }
}
