//! A development PKI (rcgen): a CA, and certificates for the controller (DNS and IP SANs, and
//! the URI SAN `spiffe://argus/replica/argus-controller` with client use too, so that a replica
//! presents it when it forwards a call to another), node agents (URI SAN
//! `spiffe://argus/node/<id>`) and people or scripts (URI SAN `spiffe://argus/user/<name>/<role>`),
//! as `argusctl certs` writes them and the tests use them. For production, any CA that issues
//! the same SANs will do.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};

use crate::auth::{NODE_URI, REPLICA_URI, Role, USER_URI};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused.
    #[error("making a certificate")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// The controller, reachable under these DNS names or IP addresses.
    Controller(Vec<String>),
    /// The node agent of node `id`.
    Node(String),
    /// A person or script with a role.
    User(String, Role),
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that issues [`Leaf`] certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate and key.
    pub pair: Pair,
}

/// A validity window: from `days_before` days ago to `days_after` days from now (negative for
/// a certificate that has already expired).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub days_before: i64,
    pub days_after: i64,
}

impl Validity {
    /// Valid from yesterday for `days`.
    pub fn days(days: i64) -> Self {
        Self {
            days_before: 1,
            days_after: days,
        }
    }

    fn apply(self, params: &mut CertificateParams) {
        let ymd = |d: i64| {
            let t = chrono::Utc::now() + chrono::Duration::days(d);
            let date = t.date_naive();
            use chrono::Datelike;
            date_time_ymd(date.year(), date.month() as u8, date.day() as u8)
        };
        params.not_before = ymd(-self.days_before);
        params.not_after = ymd(self.days_after);
    }
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str, validity: Validity) -> Result<Self, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Argus");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity.apply(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pair = Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            pair,
        })
    }

    /// The CA of an earlier run, from its PEM files.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            pair: Pair {
                cert_pem: cert_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
        })
    }

    /// A certificate for `leaf`, signed by this CA.
    pub fn issue(&self, leaf: &Leaf, validity: Validity) -> Result<Pair, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let (cn, eku) = match leaf {
            Leaf::Controller(names) => {
                for n in names {
                    params.subject_alt_names.push(match n.parse() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => SanType::DnsName(n.as_str().try_into()?),
                    });
                }
                params.subject_alt_names.push(SanType::URI(
                    format!("{REPLICA_URI}argus-controller").try_into()?,
                ));
                (
                    "argus-controller".to_owned(),
                    vec![ExtendedKeyUsagePurpose::ServerAuth, client],
                )
            }
            Leaf::Node(id) => {
                params
                    .subject_alt_names
                    .push(SanType::URI(format!("{NODE_URI}{id}").try_into()?));
                (format!("node {id}"), vec![client])
            }
            Leaf::User(name, role) => {
                params
                    .subject_alt_names
                    .push(SanType::URI(format!("{USER_URI}{name}/{role}").try_into()?));
                params
                    .distinguished_name
                    .push(DnType::OrganizationalUnitName, role.as_str());
                (name.clone(), vec![client])
            }
        };
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = eku;
        validity.apply(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `pair` as `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem` (the key readable by its
/// owner only); returns the certificate's path.
pub fn write_pair(dir: &Path, stem: &str, pair: &Pair) -> Result<PathBuf, PkiError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    std::fs::write(&cert, &pair.cert_pem).map_err(io(&cert))?;
    write_private(&key, &pair.key_pem).map_err(io(&key))?;
    Ok(cert)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// The CA in `dir` (`ca.pem`, `ca-key.pem`), made on first use.
pub fn dir_ca(dir: &Path, validity: Validity) -> Result<(Ca, bool), PkiError> {
    let cert = dir.join("ca.pem");
    let key = dir.join("ca-key.pem");
    if cert.exists() && key.exists() {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| PkiError::Io {
                path: p.to_owned(),
                source,
            })
        };
        return Ok((Ca::load(&read(&cert)?, &read(&key)?)?, false));
    }
    let ca = Ca::new("Argus development CA", validity)?;
    write_pair(dir, "ca", &ca.pair)?;
    Ok((ca, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Identity, identity_of};

    #[test]
    fn leaves_carry_the_identities_auth_reads() {
        let ca = Ca::new("test", Validity::days(1)).expect("ca");
        let der = |p: &Pair| {
            crate::tls::read_certs_pem(&p.cert_pem)
                .expect("pem")
                .remove(0)
        };
        let node = ca
            .issue(&Leaf::Node("n1".into()), Validity::days(1))
            .expect("node");
        assert_eq!(identity_of(&der(&node)), Some(Identity::Node("n1".into())));
        let user = ca
            .issue(&Leaf::User("ann".into(), Role::Viewer), Validity::days(1))
            .expect("user");
        assert!(
            matches!(identity_of(&der(&user)), Some(Identity::User(c)) if c.name == "ann" && c.role == Role::Viewer)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        write_pair(dir.path(), "ca", &ca.pair).expect("write");
        let (again, made) = dir_ca(dir.path(), Validity::days(1)).expect("load");
        assert!(!made);
        let controller = again
            .issue(
                &Leaf::Controller(vec!["localhost".into(), "127.0.0.1".into()]),
                Validity::days(1),
            )
            .expect("issued by the loaded CA");
        assert_eq!(
            identity_of(&der(&controller)),
            Some(Identity::Replica("argus-controller".into()))
        );
    }
}
