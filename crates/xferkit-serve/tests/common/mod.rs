//! Helpers both serve test files use.

use std::path::{Path, PathBuf};

/// Every file under a local store's `root` except its metadata sidecars
/// (`.xferkit/meta`, `.xferkit/meta2`): objects and temp files, sorted.
pub fn store_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.retain(|p| {
        let rel = p.strip_prefix(root).unwrap();
        !rel.starts_with(".xferkit/meta") && !rel.starts_with(".xferkit/meta2")
    });
    out.sort();
    out
}
