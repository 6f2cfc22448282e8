//! Compiles every `bpf/*.bpf.c` with clang into OUT_DIR; the objects are embedded in the crate, so nodes need no
//! compiler. CO-RE relocations against the vendored `bpf/<arch>/vmlinux.h` make one object fit many kernels.

#![allow(
    clippy::unwrap_used,
    reason = "a build script reports a missing Cargo variable or a failed compile by panicking"
)]

use std::{env, path::PathBuf, process::Command};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("bpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    // Only x86_64 is vendored; arm64 needs bpf/aarch64/vmlinux.h (bpftool btf dump) and __TARGET_ARCH_arm64.
    let (arch_dir, arch_def) = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => ("x86_64", "__TARGET_ARCH_x86"),
        Ok("aarch64") => ("aarch64", "__TARGET_ARCH_arm64"),
        other => panic!("no vmlinux.h vendored for target arch {other:?}"),
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    println!("cargo:rerun-if-changed={}", dir.display());
    let strip = env::var("LLVM_STRIP").unwrap_or_else(|_| "llvm-strip".into());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=LLVM_STRIP");
    let mut sources: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
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
