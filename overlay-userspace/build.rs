//! Builds the eBPF object (overlay-ebpf) with aya-build: nightly, build-std=core,
//! bpfel target, linked by bpf-linker with BTF. `cargo xtask build` installs what
//! that needs first.
fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../overlay-ebpf");
    let common_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../overlay-common");
    println!("cargo:rerun-if-changed={common_dir}");
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_UPGRADE_TEST_VARIANT").is_some() {
        &["upgrade-test-variant"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "overlay-ebpf",
            root_dir: ebpf_dir,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
