//! A Docker image of the reference device built from a binary of this project, with no registry
//! and no base image: the binary and the shared libraries it links (as `ldd` lists them) are
//! packed into a root file system and loaded with `docker import`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no Docker engine: {0}")]
    NoDocker(String),
    #[error("{0}")]
    Build(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// Whether a Docker engine answers; the reason when it does not.
pub fn docker_available() -> Result<(), ImageError> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::NoDocker(format!("cannot run docker: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageError::NoDocker(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// The files of the image: the binary as /usr/local/bin/opof, the loader and libraries.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd").arg(binary).output().map_err(io("running ldd"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(ImageError::Build(format!("ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr))));
    }
    Ok(text.split_whitespace().filter(|w| w.starts_with('/')).map(PathBuf::from).collect())
}

/// Builds image `tag` from `binary`; returns the image id. `strip` removes debug information
/// from the copy (debug builds are large).
pub fn build_image(binary: &Path, tag: &str, strip: bool) -> Result<String, ImageError> {
    docker_available()?;
    let root = tempfile::tempdir().map_err(io("temporary folder"))?;
    let r = root.path();
    let bin_dir = r.join("usr/local/bin");
    std::fs::create_dir_all(&bin_dir).map_err(io("image root"))?;
    std::fs::create_dir_all(r.join("tmp")).map_err(io("image root"))?;
    let dest = bin_dir.join("opof");
    std::fs::copy(binary, &dest).map_err(io(format!("copying {}", binary.display())))?;
    if strip {
        let ok = Command::new("strip").arg("--strip-debug").arg(&dest).status().map(|s| s.success());
        if !matches!(ok, Ok(true)) {
            // Not fatal: the image is only larger.
            eprintln!("note: strip --strip-debug failed; the image keeps the debug information");
        }
    }
    for lib in libraries(binary)? {
        let target = r.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(io("image root"))?;
        }
        std::fs::copy(&lib, &target).map_err(io(format!("copying {}", lib.display())))?;
    }
    let tar = Command::new("tar")
        .arg("-C")
        .arg(r)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io("running tar"))?;
    let import = Command::new("docker")
        .args([
            "import",
            "--change",
            "ENTRYPOINT [\"/usr/local/bin/opof\"]",
            "--change",
            "CMD [\"device\", \"--listen\", \"0.0.0.0:50151\"]",
            "--change",
            "EXPOSE 50151",
            "--change",
            "ENV RUST_LOG=info",
            "-",
            tag,
        ])
        .stdin(tar.stdout.ok_or_else(|| ImageError::Build("tar gave no output".into()))?)
        .output()
        .map_err(io("running docker import"))?;
    if !import.status.success() {
        return Err(ImageError::Build(format!("docker import: {}", String::from_utf8_lossy(&import.stderr).trim())));
    }
    let _ = std::io::stderr().flush();
    Ok(String::from_utf8_lossy(&import.stdout).trim().to_string())
}
