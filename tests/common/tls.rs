//! A TLS front for smart-dev-server: terminates TLS with a certificate signed by a test CA and
//! passes the bytes on to the plain-HTTP server. Its certificate (and the CA) can be replaced by
//! starting another front on the same port, as a cert-manager rotation would.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::run_tool;

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a fresh CA and server certificate with the openssl command line in `dir`.
pub fn make_pki(dir: &Path) -> TestPki {
    std::fs::create_dir_all(dir).unwrap();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let openssl = |args: &[&str]| {
        let (ok, _, err) = run_tool("openssl", args);
        assert!(ok, "openssl {args:?} failed: {err}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.crt"),
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &path("server.key"),
        "-out",
        &path("server.csr"),
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("server.ext"),
        "-out",
        &path("server.crt"),
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    TestPki {
        ca_pem: read("ca.crt"),
        cert_pem: read("server.crt"),
        key_pem: read("server.key"),
    }
}

pub struct TlsFront {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Listens on `address` (port 0: any free port) and forwards every connection to `upstream`.
    pub async fn start(address: SocketAddr, pki: &TestPki, upstream: SocketAddr) -> Self {
        super::install_crypto_provider();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Dropped with this task: stopping the front cuts every open connection too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    // A client that does not trust the certificate fails the handshake here.
                    let Ok(mut tls) = acceptor.accept(inbound).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self { address, task }
    }

    /// Stops accepting and cuts every open connection.
    pub fn stop(self) {
        self.task.abort();
    }
}
