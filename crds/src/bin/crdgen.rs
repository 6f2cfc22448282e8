//! Writes the CRD YAML for every Sonde resource into `crds/` and the Helm chart's `helm/sonde/crds/`, or into
//! the one folder given as the argument.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![here.clone(), here.join("../helm/sonde/crds")],
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (file, crd) in sonde_crds::all_crds() {
            let path = dir.join(file);
            std::fs::write(&path, sonde_crds::crd_yaml(&crd)?)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
