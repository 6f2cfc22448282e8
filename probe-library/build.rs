//! Compiles every probe's C file (`src/probes/<probe>.bpf.c`) with clang into OUT_DIR; the objects are embedded
//! in the crate, so nodes need no compiler. CO-RE relocations against the vendored `bpf/<arch>/vmlinux.h` make one
//! object fit many kernels. It also writes the registry's module list (`probes.rs`): each C file's Rust twin
//! `src/probes/<probe>.rs` as a module, and the exhaustive match from `ProbeName` to its entry, so a probe is
//! added by adding its two files (and its API row in `sonde_vocab::probe`), never by editing a list.

#![allow(
    clippy::unwrap_used,
    reason = "a build script reports a missing Cargo variable or a failed compile by panicking"
)]

use std::{env, path::PathBuf, process::Command};

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = crate_dir.join("bpf");
    let probes = crate_dir.join("src").join("probes");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    // Only x86_64 is vendored; arm64 needs bpf/aarch64/vmlinux.h (bpftool btf dump) and __TARGET_ARCH_arm64.
    let (arch_dir, arch_def) = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => ("x86_64", "__TARGET_ARCH_x86"),
        Ok("aarch64") => ("aarch64", "__TARGET_ARCH_arm64"),
        other => panic!("no vmlinux.h vendored for target arch {other:?}"),
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-changed={}", probes.display());
    let strip = env::var("LLVM_STRIP").unwrap_or_else(|_| "llvm-strip".into());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=LLVM_STRIP");
    let mut sources: Vec<_> = std::fs::read_dir(&probes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    registry(&probes, &sources, &out);
    for src in sources {
        let name = src
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".bpf.c", ".bpf.o");
        let status = Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-mcpu=v3",
                "-Wall",
                "-Werror",
                "-Wno-unused-function",
            ])
            .arg(format!("-D{arch_def}"))
            .arg("-I")
            .arg(dir.join(arch_dir))
            .arg("-I")
            .arg(&dir)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(out.join(&name))
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run {clang} (install clang: ./scripts/deps.sh): {e}")
            });
        assert!(status.success(), "clang failed on {}", src.display());
        // -g is what makes clang emit BTF and CO-RE relocations (.BTF, .BTF.ext), which the loader needs; the
        // DWARF it also emits is ~95 % of each object and nothing reads it. Strip it, as libbpf-tools do.
        let status = Command::new(&strip)
            .args(["-g"])
            .arg(out.join(&name))
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run {strip} (install llvm: ./scripts/deps.sh): {e}")
            });
        assert!(status.success(), "{strip} -g failed on {name}");
    }
}

/// Writes `probes.rs`: a module per probe (`src/probes/<probe>.rs`, which must exist beside its C file) and
/// `info`, the exhaustive match from `ProbeName::<Probe>` (the file name in CamelCase) to the module's `PROBE`.
/// A C file without a Rust twin, or a registered name without files, fails the build with the file to add.
fn registry(probes: &std::path::Path, sources: &[PathBuf], out: &std::path::Path) {
    let mut modules = String::new();
    let mut arms = String::new();
    for src in sources {
        let stem = src
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".bpf.c")
            .to_string();
        let rust = probes.join(format!("{stem}.rs"));
        assert!(
            rust.exists(),
            "{} has no Rust side: add {} with its `pub(crate) const PROBE: ProbeInfo`",
            src.display(),
            rust.display()
        );
        let variant: String = stem
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        modules.push_str(&format!(
            "#[path = {:?}]\nmod {stem};\n",
            rust.display().to_string()
        ));
        arms.push_str(&format!(
            "        ProbeName::{variant} => &{stem}::PROBE,\n"
        ));
    }
    let text = format!(
        "{modules}\n/// The entry of `name`: an exhaustive match, so a probe registered in `sonde_vocab::probe` without its\n\
         /// files here (or files without a registered name) does not compile.\n\
         pub fn info(name: ProbeName) -> &'static ProbeInfo {{\n    match name {{\n{arms}    }}\n}}\n"
    );
    std::fs::write(out.join("probes.rs"), text).unwrap();
}
