//! `opof certs`: a CA, a server and a client certificate for TLS and mutual TLS.

use std::path::PathBuf;

use clap::Args;
use opof_device::tls;

#[derive(Args)]
pub(crate) struct CertsArgs {
    /// Folder to write ca.pem, ca.key, server.pem, server.key, client.pem, client.key into.
    #[arg(long, default_value = "tls")]
    out: PathBuf,
    /// Extra names or addresses for the server certificate (localhost, 127.0.0.1, ::1 always).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Replace TLS material already in the folder (by default an existing file is an error).
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(a: CertsArgs) -> anyhow::Result<()> {
    let g = tls::generate(&a.out, &a.hosts, a.force)?;
    for f in &g.files {
        println!("{}", f.display());
    }
    eprintln!(
        "mutual TLS: opof device --tls-dir {0}   (clients use {0}/ca.pem, client.pem, client.key)",
        g.dir.display()
    );
    Ok(())
}
