//! `opof activation`: the VNF operator's step (list, active, activate, deactivate).

use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Args)]
pub(crate) struct ActivationArgs {
    /// The VNF's Activation service (HOST:PORT or a URI).
    #[arg(long, default_value = "127.0.0.1:50152", global = true)]
    vnf: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Mutual TLS to a VNF started with --tls-dir: a folder made by `opof certs` (ca.pem,
    /// client.pem, client.key).
    #[arg(long, global = true)]
    tls_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    action: ActivationAction,
}

#[derive(Subcommand)]
pub(crate) enum ActivationAction {
    /// The registered devices (the active one marked with *).
    List,
    /// The active device, if any (exit 0 either way).
    Active,
    /// Activate a registered device by name (refused while another is active).
    Activate {
        /// The device's name, as it registered (see `opof activation list`).
        name: String,
    },
    /// Deactivate the active device (or the one named, which must be the active one).
    Deactivate {
        /// The device's name (default: whichever is active).
        name: Option<String>,
    },
}

pub(crate) async fn run_activation(a: ActivationArgs) -> anyhow::Result<()> {
    use opof_vnf::operator::{device_json, device_table, Operator};
    let tls = match &a.tls_dir {
        Some(d) => Some(opof_device::tls::ClientTls::from_dir(d)?),
        None => None,
    };
    let mut op = Operator::connect_tls(&a.vnf, Duration::from_secs(5), tls.as_ref()).await?;
    match a.action {
        ActivationAction::List => {
            let devices = op.list().await?;
            let active = op.active().await?.map(|d| d.name);
            if a.json {
                let all: Vec<_> =
                    devices.iter().map(|d| device_json(d, active.as_deref() == Some(d.name.as_str()))).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", device_table(&devices, active.as_deref()));
            }
        }
        ActivationAction::Active => match op.active().await? {
            Some(d) if a.json => println!("{}", serde_json::to_string_pretty(&device_json(&d, true))?),
            Some(d) => print!("{}", device_table(std::slice::from_ref(&d), Some(&d.name))),
            None if a.json => println!("null"),
            None => println!("no device is active"),
        },
        ActivationAction::Activate { name } => {
            let d = op.activate(&name).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&device_json(&d, true))?);
            } else {
                println!("activated {}", d.name);
            }
        }
        ActivationAction::Deactivate { name } => {
            let d = op.deactivate(name.as_deref()).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&device_json(&d, false))?);
            } else {
                println!("deactivated {}", d.name);
            }
        }
    }
    Ok(())
}
