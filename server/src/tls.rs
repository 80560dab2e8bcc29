//! TLS on both listeners, with rustls: a certificate chain and its key
//! from PEM files, loaded at start (a bad pair stops the start, exit 2)
//! and loaded again by the server's reloader (on SIGHUP and when a file
//! changes, as `certificates`); a reload that fails keeps the pair in use.
//!
//! Each connection's handshake takes the configuration current when it
//! starts, so a reload reaches new connections while open ones keep the
//! certificate they were given.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// Bytes read of a certificate or key file at most: a PEM chain is a few
/// KiB; a path that names something else must not fill memory.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The certificate and key files, and the configuration made of them.
#[derive(Debug)]
pub(crate) struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let bad = |reason: String| Error::config(format!("TLS {what}"), format!("{}: {reason}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(bad(format!("is over {MAX_PEM_BYTES} bytes: not a PEM file")));
    }
    Ok(bytes)
}

/// A server configuration from the PEM files at `cert` (the chain, leaf
/// first) and `key`, offering HTTP/2 and HTTP/1.1.
fn configure(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let pem = read_pem("certificate", cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::config("TLS certificate", format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::config(
            "TLS certificate",
            format!("{} holds no PEM certificate", cert.display()),
        ));
    }
    let pem = read_pem("key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| Error::config("TLS key", format!("{} holds no PEM private key: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("TLS", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            Error::config(
                "TLS key",
                format!(
                    "{} and {} do not make a usable pair: {e}",
                    cert.display(),
                    key.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Tls {
    /// Loads the pair; an error names the file and what is wrong with it.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Tls> {
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(configure(cert, key)?),
        })
    }

    /// The files, for watching.
    pub(crate) fn files(&self) -> [&Path; 2] {
        [&self.cert, &self.key]
    }

    /// Loads the files again; on error the pair in use stays.
    pub(crate) fn reload(&self) -> Result<()> {
        let fresh = configure(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// An acceptor with the configuration in use now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_and_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let e = Tls::load(&cert, &key).expect_err("missing").to_string();
        assert!(e.contains("cert.pem") && e.contains("cannot be read"), "{e}");
        std::fs::write(&cert, "not a certificate\n").expect("write");
        let e = Tls::load(&cert, &key).expect_err("no PEM").to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        std::fs::write(&cert, vec![b'-'; (MAX_PEM_BYTES + 10) as usize]).expect("write");
        let e = Tls::load(&cert, &key).expect_err("huge").to_string();
        assert!(e.contains("not a PEM file"), "{e}");
    }
}
