//! A throwaway certificate authority and a server certificate signed by it, made with the
//! `openssl` command line tool, for STARTTLS tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// PEM files written by [`TestPki::generate`].
#[derive(Clone, Debug)]
pub struct TestPki {
    /// The CA certificate (what `outpost serve --tls-ca-file` takes).
    pub ca_cert: PathBuf,
    /// The server's certificate (leaf) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
    let ok = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then_some(())
}

impl TestPki {
    /// A P-256 CA and a leaf for `dns_name` (subjectAltName, serverAuth) in `dir`;
    /// `None` if `openssl` is missing or fails.
    pub fn generate(dir: &Path, dns_name: &str) -> Option<TestPki> {
        std::fs::create_dir_all(dir).ok()?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=outpost test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &ca)?;
        let subj = format!("/CN={dns_name}");
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend(["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", &subj]);
        openssl(dir, &csr)?;
        std::fs::write(
            dir.join("leaf.ext"),
            format!(
                "subjectAltName=DNS:{dns_name}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .ok()?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.pem",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ],
        )?;
        Some(TestPki {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("leaf.pem"),
            key: dir.join("leaf.key"),
        })
    }
}

/// A self-signed RSA certificate for `outpost.test` and its key (PEM, in `dir`), made with
/// the openssl command; `None` if that fails.
pub fn self_signed(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=outpost.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some((cert, key))
}
