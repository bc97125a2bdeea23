//! TLS material for the control plane: reading PEM files, and making a private CA with a
//! server certificate (with subjectAltName, which rustls requires) and a client certificate,
//! so that mutual TLS runs in one step. Nothing private is ever committed: keys are made at
//! run time and written with mode 0600.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

/// File names inside a TLS folder made by [`generate`].
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: no PEM {what} found in the file")]
    NotPem { path: PathBuf, what: &'static str },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0} exists: refusing to overwrite TLS material (give --force to replace it)")]
    Exists(PathBuf),
}

fn read_pem(path: &Path, what: &'static str) -> Result<String, TlsError> {
    let text = fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.into(), source })?;
    if !text.contains("-----BEGIN") {
        return Err(TlsError::NotPem { path: path.into(), what });
    }
    Ok(text)
}

/// Writes a new file: created exclusively (never through a symbolic link planted at `path`,
/// never over an existing file) with its final mode from the start (0600 for private keys),
/// so no other user can open a key between its creation and a chmod.
fn write(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Io { path: path.into(), source };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// What a server presents, and whom it trusts for client certificates (mutual TLS).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// Set: clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<String>,
}

impl ServerTls {
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        Ok(ServerTls {
            cert_pem: read_pem(cert, "certificate")?,
            key_pem: read_pem(key, "private key")?,
            client_ca_pem: client_ca.map(|p| read_pem(p, "CA certificate")).transpose()?,
        })
    }

    /// Mutual TLS from a folder made by [`generate`].
    pub fn from_dir(dir: &Path) -> Result<Self, TlsError> {
        Self::from_files(&dir.join(SERVER_CERT), &dir.join(SERVER_KEY), Some(&dir.join(CA_CERT)))
    }

    pub fn to_tonic(&self) -> tonic::transport::ServerTlsConfig {
        let mut cfg = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.client_ca_pem {
            cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        cfg
    }
}

/// What a client trusts, and the certificate it presents (for mutual TLS).
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca_pem: String,
    pub identity: Option<(String, String)>,
    /// Name to verify in the server certificate; the endpoint's host when `None`.
    pub domain: Option<String>,
}

impl ClientTls {
    pub fn from_files(ca: &Path, cert_key: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        Ok(ClientTls {
            ca_pem: read_pem(ca, "CA certificate")?,
            identity: cert_key
                .map(|(c, k)| Ok::<_, TlsError>((read_pem(c, "certificate")?, read_pem(k, "private key")?)))
                .transpose()?,
            domain: None,
        })
    }

    /// The CA and the client certificate of a folder made by [`generate`].
    pub fn from_dir(dir: &Path) -> Result<Self, TlsError> {
        Self::from_files(&dir.join(CA_CERT), Some((&dir.join(CLIENT_CERT), &dir.join(CLIENT_KEY))))
    }

    pub fn to_tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            cfg = cfg.domain_name(d.clone());
        }
        cfg
    }
}

/// The files [`generate`] wrote.
#[derive(Clone, Debug)]
pub struct Generated {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Makes a CA, a server certificate for `hosts` (plus localhost, 127.0.0.1 and ::1) and a
/// client certificate, all signed by the CA, into `dir` (created if needed).
///
/// Existing files are not replaced unless `force`; then each is removed first (a symbolic link
/// is removed itself, never followed) and written anew.
pub fn generate(dir: &Path, hosts: &[String], force: bool) -> Result<Generated, TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.into(), source })?;
    for name in [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY] {
        let path = dir.join(name);
        // symlink_metadata: a link counts as there, whether or not it points anywhere.
        if fs::symlink_metadata(&path).is_ok() {
            if !force {
                return Err(TlsError::Exists(path));
            }
            fs::remove_file(&path).map_err(|source| TlsError::Io { path: path.clone(), source })?;
        }
    }

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "OpenOffload toolkit test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(hosts.iter().filter(|h| !names.contains(h)).cloned().collect::<Vec<_>>());
    let mut server_params = CertificateParams::new(names)?;
    server_params.distinguished_name.push(DnType::CommonName, "opof reference device");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let mut client_params = CertificateParams::new(vec!["opof-client".to_string()])?;
    client_params.distinguished_name.push(DnType::CommonName, "opof client");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client_cert = client_params.signed_by(&client_key, &issuer)?;

    let items = [
        (CA_CERT, ca_cert.pem(), false),
        (CA_KEY, issuer.key().serialize_pem(), true),
        (SERVER_CERT, server_cert.pem(), false),
        (SERVER_KEY, server_key.serialize_pem(), true),
        (CLIENT_CERT, client_cert.pem(), false),
        (CLIENT_KEY, client_key.serialize_pem(), true),
    ];
    let mut files = Vec::new();
    for (name, text, private) in items {
        let path = dir.join(name);
        write(&path, &text, private)?;
        files.push(path);
    }
    Ok(Generated { dir: dir.into(), files })
}
