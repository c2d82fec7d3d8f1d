//! Debian's kernel images: the newest of a series, fetched with `apt-get
//! download`, unpacked and cached under `target/vmtest/kernels/`, and the modules
//! the tests need, taken from the package with their dependencies.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::run;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// Debian 12's kernel.
    V6_1,
    /// Debian 12's backports kernel.
    V6_12,
}

impl Series {
    pub fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// Whether a package name is this series' generic amd64 image (not -rt,
    /// -cloud, -dbg or -unsigned).
    fn matches(self, package: &str) -> bool {
        let Some(version) = package
            .strip_prefix("linux-image-")
            .and_then(|v| v.strip_suffix("-amd64"))
        else {
            return false;
        };
        match self {
            // linux-image-6.1.0-56-amd64
            Series::V6_1 => version
                .strip_prefix("6.1.0-")
                .is_some_and(|abi| !abi.is_empty() && abi.bytes().all(|b| b.is_ascii_digit())),
            // linux-image-6.12.117+deb12-amd64
            Series::V6_12 => version
                .strip_prefix("6.12.")
                .and_then(|v| v.split_once('+'))
                .is_some_and(|(patch, tag)| {
                    !patch.is_empty()
                        && patch.bytes().all(|b| b.is_ascii_digit())
                        && tag.starts_with("deb")
                        && tag[3..].bytes().all(|b| b.is_ascii_digit())
                }),
        }
    }
}

/// An unpacked kernel image package.
pub struct KernelImage {
    pub series: Series,
    /// The package's kernel release, e.g. "6.1.0-56-amd64".
    pub release: String,
    pub vmlinuz: PathBuf,
    modules_dir: PathBuf,
}

/// The newest image of `series` the archive offers, from the cache if it is
/// there. With no package lists (or none matching), the lists are refreshed once;
/// with the archive out of reach, the newest cached image of the series serves.
pub fn fetch(series: Series, cache: &Path) -> Result<KernelImage> {
    std::fs::create_dir_all(cache)?;
    let mut newest = newest_package(series)?;
    if newest.is_none() {
        println!(
            "vmtest: no {} kernel in the package lists; apt-get update",
            series.name()
        );
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        newest = newest_package(series)?;
    }
    let package = match newest {
        Some(p) => p,
        None => newest_cached(series, cache)?.with_context(|| {
            format!(
                "no linux-image for {} in the archive or the cache",
                series.name()
            )
        })?,
    };
    let dir = cache.join(&package);
    let done = dir.join(".unpacked");
    if done.exists() {
        println!("vmtest: kernel {package} cached in {}", dir.display());
    } else {
        println!(
            "vmtest: downloading {package} (apt-get download) into {}",
            cache.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new("apt-get")
            .current_dir(cache)
            // Downloads into a root-owned directory, which apt's sandbox user
            // cannot write.
            .args(["-o", "APT::Sandbox::User=root", "download", &package]))?;
        let deb = std::fs::read_dir(cache)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                })
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        std::fs::remove_file(&deb)?;
        std::fs::write(&done, "")?;
    }
    KernelImage::open(series, &dir)
}

/// Numbers in a package name, for ordering versions: 6.1.0-9 before 6.1.0-10.
fn version_key(package: &str) -> Vec<u64> {
    package
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

fn newest_package(series: Series) -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", "^linux-image-6\\.1"])
        .output()
        .context("running apt-cache search")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| series.matches(p))
        .max_by_key(|p| version_key(p))
        .map(str::to_owned))
}

fn newest_cached(series: Series, cache: &Path) -> Result<Option<String>> {
    Ok(std::fs::read_dir(cache)?
        .flatten()
        .filter(|e| e.path().join(".unpacked").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| series.matches(p))
        .max_by_key(|p| version_key(p)))
}

impl KernelImage {
    fn open(series: Series, dir: &Path) -> Result<KernelImage> {
        let modules_root = dir.join("lib/modules");
        let release = std::fs::read_dir(&modules_root)
            .with_context(|| format!("reading {}", modules_root.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .with_context(|| format!("no kernel release in {}", modules_root.display()))?;
        let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
        ensure!(vmlinuz.exists(), "{} is missing", vmlinuz.display());
        Ok(KernelImage {
            series,
            modules_dir: modules_root.join(&release),
            release,
            vmlinuz,
        })
    }

    /// `wanted` and everything they depend on, uncompressed, dependencies
    /// first. A module the kernel has built in needs nothing.
    pub fn modules_in_load_order(&self, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = BTreeMap::new();
        index_modules(&self.modules_dir.join("kernel"), &mut files)?;
        let builtin =
            std::fs::read_to_string(self.modules_dir.join("modules.builtin")).unwrap_or_default();
        let builtin: Vec<String> = builtin
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .map(|f| module_name(f).to_owned())
            .collect();
        let mut ordered = Vec::new();
        for name in wanted {
            self.visit(
                &module_key(name),
                &files,
                &builtin,
                &mut ordered,
                &mut Vec::new(),
            )?;
        }
        Ok(ordered)
    }

    fn visit(
        &self,
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        builtin: &[String],
        ordered: &mut Vec<(String, Vec<u8>)>,
        stack: &mut Vec<String>,
    ) -> Result<()> {
        if ordered.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        ensure!(
            !stack.iter().any(|n| n == name),
            "module dependency cycle through {name}"
        );
        let Some(path) = files.get(name) else {
            if builtin.iter().any(|b| b == name) {
                return Ok(());
            }
            bail!("{} has no module {name}", self.release);
        };
        let bytes = read_module(path)?;
        stack.push(name.to_owned());
        for dep in depends(&bytes) {
            self.visit(&module_key(&dep), files, builtin, ordered, stack)?;
        }
        // A soft dependency is what the module asks for at init by another
        // name (libcrc32c: the "crc32c" algorithm), so insmod fails without
        // it. Without modules.alias (depmod makes it, the guest has none) the
        // name is a module's, or crypto's portable `<name>_generic`.
        for soft in soft_pre_dependencies(&bytes) {
            let key = module_key(&soft);
            let generic = format!("{key}_generic");
            if let Some(found) = [key, generic]
                .into_iter()
                .find(|k| files.contains_key(k) || builtin.contains(k))
            {
                self.visit(&found, files, builtin, ordered, stack)?;
            }
        }
        stack.pop();
        ordered.push((name.to_owned(), bytes));
        Ok(())
    }
}

/// Module names treat '-' and '_' alike; files use either.
fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

/// "vxlan.ko.xz" → "vxlan".
fn module_name(file: &str) -> &str {
    file.split(".ko").next().unwrap_or(file)
}

fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(file) = path.file_name().map(|n| n.to_string_lossy().into_owned())
            && file.contains(".ko")
        {
            files.insert(module_key(module_name(&file)), path);
        }
    }
    Ok(())
}

/// The module, decompressed on the host: busybox's insmod takes plain ELF.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return std::fs::read(path).with_context(|| format!("reading {name}"));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} -dc {name}"))?;
    ensure!(out.status.success(), "{tool} -dc {name} failed");
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section, whose strings are
/// NUL-separated `key=value` pairs.
fn depends(module: &[u8]) -> Vec<String> {
    modinfo(module, "depends")
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The `pre:` names of a module's `softdep=` entry (`pre: a b post: c`).
fn soft_pre_dependencies(module: &[u8]) -> Vec<String> {
    let Some(value) = modinfo(module, "softdep") else {
        return Vec::new();
    };
    let mut pre = Vec::new();
    let mut in_pre = false;
    for word in value.split_whitespace() {
        match word {
            "pre:" => in_pre = true,
            "post:" => in_pre = false,
            name if in_pre => pre.push(name.to_owned()),
            _ => {}
        }
    }
    pre
}

fn modinfo(module: &[u8], key: &str) -> Option<String> {
    let key = format!("\0{key}=");
    let key = key.as_bytes();
    let at = module.windows(key.len()).position(|w| w == key)?;
    let value = &module[at + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    Some(String::from_utf8_lossy(&value[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_pick_the_generic_images() {
        assert!(Series::V6_1.matches("linux-image-6.1.0-56-amd64"));
        assert!(!Series::V6_1.matches("linux-image-6.1.0-56-rt-amd64"));
        assert!(!Series::V6_1.matches("linux-image-6.1.0-56-cloud-amd64"));
        assert!(!Series::V6_1.matches("linux-image-6.12.117+deb12-amd64"));
        assert!(Series::V6_12.matches("linux-image-6.12.117+deb12-amd64"));
        assert!(!Series::V6_12.matches("linux-image-6.12.117+deb12-rt-amd64"));
        assert!(!Series::V6_12.matches("linux-image-6.1.0-56-amd64"));
        assert!(
            version_key("linux-image-6.1.0-10-amd64") > version_key("linux-image-6.1.0-9-amd64")
        );
    }

    #[test]
    fn modinfo_depends_are_read() {
        let blob = b"\x7fELF...\0license=GPL\0depends=udp_tunnel,ip6_udp_tunnel\0name=vxlan\0";
        assert_eq!(depends(blob), ["udp_tunnel", "ip6_udp_tunnel"]);
        assert!(depends(b"\0depends=\0name=veth\0").is_empty());
        assert_eq!(module_name("vxlan.ko.xz"), "vxlan");
    }

    #[test]
    fn modinfo_soft_pre_dependencies_are_read() {
        let blob = b"\0license=GPL\0softdep=pre: crc32c post: foo\0name=libcrc32c\0";
        assert_eq!(soft_pre_dependencies(blob), ["crc32c"]);
        assert!(soft_pre_dependencies(b"\0name=veth\0").is_empty());
    }
}
