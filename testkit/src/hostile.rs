//! Hostile packages too large to build in memory, streamed to disk.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

/// Writes the unsigned bomb of issue 10: `release.json` with no
/// `.minisig`, then a file of `zeros` zero bytes, then `empties` empty files,
/// all under `package/`. 1 GiB of zeros compresses to about 1 MB.
pub fn unsigned_bomb(path: &Path, manifest: &[u8], zeros: u64, empties: usize) {
    let file = BufWriter::new(File::create(path).unwrap());
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut append = |name: &str, size: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).unwrap();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, data).unwrap();
    };
    append(
        "package/release.json",
        manifest.len() as u64,
        &mut &manifest[..],
    );
    append("package/zeros", zeros, &mut io::repeat(0).take(zeros));
    for i in 0..empties {
        append(&format!("package/empty/{i}"), 0, &mut io::empty());
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}
