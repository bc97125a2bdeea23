//! `opof image`: a Docker image of the reference device, without any registry.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum ImageCommand {
    /// Pack a binary of opof and the libraries it links into an image (`docker import`).
    Build {
        /// The opof binary to pack (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Image name and tag.
        #[arg(long, default_value = "opof-device:dev")]
        tag: String,
        /// Keep debug information in the image's binary.
        #[arg(long)]
        no_strip: bool,
    },
}

pub(crate) fn run(c: ImageCommand) -> anyhow::Result<()> {
    match c {
        ImageCommand::Build { binary, tag, no_strip } => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe().context("locating this binary")?,
            };
            eprintln!("packing {} into {tag}...", binary.display());
            let id = opof_conformance::image::build_image(&binary, &tag, !no_strip)?;
            // The size as the engine reports it (what `docker images` shows), so figures
            // quoted in docs come from this line.
            let size = std::process::Command::new("docker")
                .args(["image", "inspect", "--format", "{{.Size}}", &tag])
                .output()
                .ok()
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok());
            match size {
                Some(b) => println!("{tag} {id} {b} bytes ({:.1} MB)", b as f64 / 1e6),
                None => println!("{tag} {id}"),
            }
            Ok(())
        }
    }
}
