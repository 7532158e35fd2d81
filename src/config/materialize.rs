//! [`Config::materialize`]: what lives outside the file. Configured certificates are
//! loaded, self-signed ones generated into `<data_dir>/certs/`, trust anchors read, and the
//! dialback secret taken from the file or `<data_dir>/dialback.secret`; new files are
//! written atomically with their modes.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::dialback::DialbackSecret;
use crate::tls::{self, CertifiedDomain, TlsError};

use super::error::{invalid, io_error, io_message};
use super::{
    AuthBackend, CertificateEntry, Config, ConfigError, SecretBytes, SecretString, CERTS_DIR,
    DIALBACK_SECRET_FILE, MIN_SECRET_BYTES,
};

/// What [`Config::materialize`] loaded or created.
#[derive(Debug, Clone)]
pub struct Materialized {
    /// One certificate per local domain, in [`Config::domains`] order; each
    /// [`CertifiedDomain::domain`] is that local domain.
    pub certificates: Vec<CertifiedDomain>,
    /// The dialback secret: configured, or read from / generated into
    /// `<data_dir>/dialback.secret`.
    pub dialback_secret: DialbackSecret,
    /// The certificates of every `tls.trust` file, in order.
    pub trust: Vec<CertificateDer<'static>>,
    /// Local domains that got a freshly generated self-signed certificate in this call.
    pub generated: Vec<String>,
    /// What `[auth.ldap]` names outside the file, with `auth.backend = "ldap"`.
    pub directory: Option<DirectoryMaterial>,
}

/// What `[auth.ldap]` names outside the file ([`Config::materialize`]).
#[derive(Debug, Clone)]
pub struct DirectoryMaterial {
    /// The service account's password: `auth.ldap.bind_password`, or the first line of
    /// `auth.ldap.bind_password_file`; `None` without `bind_dn`.
    pub bind_password: Option<SecretString>,
    /// The certificates of `auth.ldap.ca_file` (empty: none configured, use the system's
    /// roots).
    pub ca: Vec<CertificateDer<'static>>,
}

impl Config {
    /// Loads or creates what lives outside the file: validates, creates `data_dir` (mode
    /// 0700 when new), loads each configured certificate (checking that it names its domain),
    /// reuses or generates a self-signed certificate for each local domain without one
    /// (`<data_dir>/certs/<domain>.crt` and `.key`, see [`tls::self_signed`]), reads the
    /// `tls.trust` anchors, and takes the configured dialback secret or reads or generates
    /// `<data_dir>/dialback.secret` (32 random bytes in hexadecimal, mode 0600).
    ///
    /// Idempotent: a second call generates nothing and returns the same certificates and
    /// secret. New files are written to a temporary name and renamed, so a crash leaves no
    /// half-written file.
    ///
    /// Errors: [`ConfigError::Invalid`] naming the key for a configured file that cannot be
    /// read or used (`tls.certificate[0].cert: /x/y: No such file or directory`) or a domain
    /// no certificate can be generated for; [`ConfigError::Io`] for `data_dir` and the files
    /// in it; [`ConfigError::DataFile`] for a stored file that is corrupt.
    pub fn materialize(&self) -> Result<Materialized, ConfigError> {
        self.validate()?;
        create_private_dir(&self.data_dir)?;

        let mut certificates = Vec::with_capacity(self.domains.len());
        let mut generated = Vec::new();
        for (i, domain) in self.domains.iter().enumerate() {
            let configured = self
                .tls
                .certificates
                .iter()
                .enumerate()
                .find(|(_, e)| &e.domain == domain);
            match configured {
                Some((j, entry)) => certificates.push(load_configured(j, entry)?),
                None => {
                    let (cert, fresh) = self_signed_in(&self.data_dir, i, domain)?;
                    if fresh {
                        generated.push(domain.clone());
                    }
                    certificates.push(cert);
                }
            }
        }

        let trust = load_trust(&self.tls.trust)?;

        let dialback_secret = match &self.s2s.dialback_secret {
            Some(secret) => DialbackSecret::new(secret.as_bytes()),
            None => load_or_create_secret(&self.data_dir.join(DIALBACK_SECRET_FILE))?,
        };

        let directory = self.directory_material()?;

        Ok(Materialized {
            certificates,
            dialback_secret,
            trust,
            generated,
            directory,
        })
    }

    /// `auth.ldap.bind_password_file` and `auth.ldap.ca_file`, read; `None` unless
    /// `auth.backend = "ldap"`.
    fn directory_material(&self) -> Result<Option<DirectoryMaterial>, ConfigError> {
        let Some(l) = self.auth.ldap.as_ref() else {
            return Ok(None);
        };
        if self.auth.backend != AuthBackend::Ldap {
            return Ok(None);
        }
        let bind_password = match (&l.bind_password, &l.bind_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                let key = "auth.ldap.bind_password_file";
                let text = fs::read_to_string(path)
                    .map_err(|e| invalid(key, format!("{}: {}", path.display(), io_message(&e))))?;
                let line = text.lines().next().unwrap_or("");
                if line.is_empty() {
                    return Err(invalid(
                        key,
                        format!("{}: the first line (the password) is empty", path.display()),
                    ));
                }
                Some(SecretString::new(line))
            }
            (None, None) => None,
        };
        let ca = match &l.ca_file {
            Some(path) => load_cert_file("auth.ldap.ca_file", path)?,
            None => Vec::new(),
        };
        Ok(Some(DirectoryMaterial { bind_password, ca }))
    }
}

fn create_private_dir(path: &Path) -> Result<(), ConfigError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| io_error(path, &e))
}

fn exists(path: &Path) -> Result<bool, ConfigError> {
    path.try_exists().map_err(|e| io_error(path, &e))
}

/// Writes `bytes` to `path` through a temporary file in the same folder
/// ([`tempfile::NamedTempFile`], created with `mode`, synced) and a rename over `path`
/// ([`tempfile::NamedTempFile::persist`]): readers see the old file or the new one,
/// never a part; a failed write leaves no temporary file behind.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let mut file = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| io_error(dir, &e))?;
    let write = |file: &mut tempfile::NamedTempFile| -> io::Result<()> {
        // Exactly `mode`, whatever the umask.
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.as_file().sync_all()
    };
    write(&mut file).map_err(|e| io_error(file.path(), &e))?;
    file.persist(path).map_err(|e| io_error(path, &e.error))?;
    Ok(())
}

/// The certificate's dNSNames cover `domain` (exactly, or by a `*.parent` wildcard for one
/// label), compared in ASCII (A-label) form, case-insensitively.
fn names_cover(names: &[String], domain: &str) -> bool {
    let Ok(ascii) = idna::domain_to_ascii(domain) else {
        return false;
    };
    let parent = ascii.split_once('.').map(|(_, p)| p);
    names.iter().any(|name| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(wild) => parent == Some(wild),
            None => name == ascii,
        }
    })
}

fn load_configured(index: usize, entry: &CertificateEntry) -> Result<CertifiedDomain, ConfigError> {
    let cert_key = format!("tls.certificate[{index}].cert");
    let key_key = format!("tls.certificate[{index}].key");
    for (key, path) in [(&cert_key, &entry.cert), (&key_key, &entry.key)] {
        fs::File::open(path).map_err(|e| {
            invalid(
                key.as_str(),
                format!("{}: {}", path.display(), io_message(&e)),
            )
        })?;
    }
    let loaded = CertifiedDomain::from_pem_files(&entry.cert, &entry.key).map_err(|e| {
        let key = match &e {
            TlsError::NoPrivateKey { .. } | TlsError::BadKey { .. } => &key_key,
            TlsError::Read { path, .. } | TlsError::BadPem { path, .. } if *path == entry.key => {
                &key_key
            }
            _ => &cert_key,
        };
        invalid(key.as_str(), e.to_string())
    })?;
    let names = loaded.dns_names();
    if !names_cover(&names, &entry.domain) {
        return Err(invalid(
            cert_key,
            format!(
                "{}: the certificate names {names:?}, not {:?}",
                entry.cert.display(),
                entry.domain
            ),
        ));
    }
    CertifiedDomain::new(
        entry.domain.clone(),
        loaded.chain().to_vec(),
        loaded.key().clone_key(),
    )
    .map_err(|e| invalid(cert_key, e.to_string()))
}

/// The self-signed certificate for `domain` in `<data_dir>/certs/`, generated when absent;
/// `true` when generated now.
fn self_signed_in(
    data_dir: &Path,
    index: usize,
    domain: &str,
) -> Result<(CertifiedDomain, bool), ConfigError> {
    let dir = data_dir.join(CERTS_DIR);
    create_private_dir(&dir)?;
    let crt = dir.join(format!("{domain}.crt"));
    let key = dir.join(format!("{domain}.key"));

    if exists(&crt)? && exists(&key)? {
        let loaded =
            CertifiedDomain::from_pem_files(&crt, &key).map_err(|e| ConfigError::DataFile {
                path: crt.clone(),
                problem: format!(
                    "stored self-signed certificate unusable: {e} (delete {} and {} to generate a new one)",
                    crt.display(),
                    key.display()
                ),
            })?;
        let cert = CertifiedDomain::new(domain, loaded.chain().to_vec(), loaded.key().clone_key())
            .map_err(|e| ConfigError::DataFile {
                path: crt.clone(),
                problem: e.to_string(),
            })?;
        return Ok((cert, false));
    }

    let cert = tls::self_signed(domain).map_err(|e| {
        invalid(
            format!("domains[{index}]"),
            format!("cannot generate a self-signed certificate: {e}"),
        )
    })?;
    // The key first: a certificate file is only ever next to its key.
    write_atomically(&key, cert.key_pem().as_bytes(), 0o600)?;
    write_atomically(&crt, cert.chain_pem().as_bytes(), 0o644)?;
    Ok((cert, true))
}

fn load_trust(paths: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let mut out = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        out.extend(load_cert_file(&format!("tls.trust[{i}]"), path)?);
    }
    Ok(out)
}

/// The trust anchors in the PEM file `path` named by `key`: at least one, each usable.
fn load_cert_file(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = fs::read(path)
        .map_err(|e| invalid(key, format!("{}: {}", path.display(), io_message(&e))))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{}: not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!(
                "{} holds no PEM certificate (expected a '-----BEGIN CERTIFICATE-----' block)",
                path.display()
            ),
        ));
    }
    for (n, cert) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(cert).map_err(|e| {
            invalid(
                key,
                format!(
                    "{}: certificate #{} is not a usable trust anchor: {e}",
                    path.display(),
                    n + 1
                ),
            )
        })?;
    }
    Ok(certs)
}

fn parse_secret_file(path: &Path, text: &str) -> Result<DialbackSecret, ConfigError> {
    let problem = match SecretBytes::from_hex(text) {
        Ok(secret) if secret.as_bytes().len() >= MIN_SECRET_BYTES => {
            return Ok(DialbackSecret::new(secret.as_bytes()))
        }
        Ok(secret) => format!(
            "the dialback secret is {} bytes, at least {MIN_SECRET_BYTES} are required",
            secret.as_bytes().len()
        ),
        Err(e) => format!("the dialback secret is not hexadecimal ({e})"),
    };
    Err(ConfigError::DataFile {
        path: path.to_owned(),
        problem: format!("{problem}; delete the file to generate a new one"),
    })
}

fn load_or_create_secret(path: &Path) -> Result<DialbackSecret, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => parse_secret_file(path, &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            write_atomically(path, format!("{}\n", hex::encode(bytes)).as_bytes(), 0o600)?;
            Ok(DialbackSecret::new(bytes))
        }
        Err(e) => Err(io_error(path, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_replaces_with_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomically(&path, b"public", 0o644).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
        // A folder that does not exist: the error names it, nothing is written.
        let missing = dir.path().join("nope").join("x");
        let err = write_atomically(&missing, b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn names_cover_exact_wildcard_and_idn() {
        let names = vec!["a.test".to_owned(), "*.b.test".to_owned()];
        assert!(names_cover(&names, "a.test"));
        assert!(names_cover(&names, "x.b.test"));
        assert!(!names_cover(&names, "b.test"));
        assert!(!names_cover(&names, "y.x.b.test"));
        assert!(!names_cover(&names, "c.test"));
        let idn = vec!["xn--bcher-kva.example".to_owned()];
        assert!(names_cover(&idn, "bücher.example"));
    }

    #[test]
    fn stored_secret_errors_name_the_file() {
        let path = Path::new("/d/dialback.secret");
        let err = parse_secret_file(path, "zz").err().unwrap();
        assert!(err.to_string().starts_with("/d/dialback.secret: "), "{err}");
        let err = parse_secret_file(path, "00ff").err().unwrap();
        assert!(err.to_string().contains("2 bytes"), "{err}");
        assert!(parse_secret_file(path, &format!("{}\n", "ab".repeat(32))).is_ok());
    }
}
