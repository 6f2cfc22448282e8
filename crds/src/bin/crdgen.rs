//! Writes the CRD YAML for every Sonde resource into a folder (default: this crate's folder, `crds/`).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for (file, crd) in sonde_crds::all_crds() {
        let path = dir.join(file);
        std::fs::write(&path, sonde_crds::crd_yaml(&crd))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
