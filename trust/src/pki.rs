//! The controller's certificate authority. It signs the controller's own server
//! certificate, the client certificate each controller replica calls the
//! others with, and one short-lived client certificate per enrolled agent. From
//! an agent's CSR only the public key is used: every name, usage and validity in
//! the certificate is decided here.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::{Result, TrustError, io_err};

const CA_YEARS: i64 = 10;

/// sha256 fingerprint of a DER certificate: how the controller knows an agent.
pub fn fingerprint(cert_der: &[u8]) -> String {
    crate::sha256(cert_der)
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo (what a join token pins).
pub fn spki_pin(cert_der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TrustError::Invalid(format!("unparsable certificate: {e}")))?;
    Ok(crate::sha256(cert.tbs_certificate.subject_pki.raw))
}

/// The DER of the first certificate in a PEM text.
pub fn first_cert_der(pem_text: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem_text.as_bytes())
        .next()
        .ok_or_else(|| TrustError::Invalid("no certificate in PEM".into()))?
        .map(|c| c.to_vec())
        .map_err(|e| TrustError::Invalid(format!("bad certificate PEM: {e}")))
}

fn random_serial() -> SerialNumber {
    let mut b = hex::decode(crate::secret::random_hex(16)).expect("hex");
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

fn validity(ttl: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    // A minute of slack for clocks that disagree a little.
    (
        now - time::Duration::minutes(1),
        now + time::Duration::seconds(ttl.as_secs() as i64),
    )
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
}

pub struct Ca {
    pub cert_pem: String,
    pin: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Loads `ca.pem` + `ca.key` from `dir`, creating them on first use.
    pub fn load_or_create(dir: &Path) -> Result<Ca> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert.exists() || key.exists() {
            return Ca::load(&cert, &key);
        }
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Slipway controller CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(365 * CA_YEARS);
        let ca_cert = params.self_signed(&key_pair)?;
        crate::write_private(&key, key_pair.serialize_pem().as_bytes())?;
        crate::write_private(&cert, ca_cert.pem().as_bytes())?;
        Ca::load(&cert, &key)
    }

    /// An existing CA (also an operator-provided one).
    pub fn load(cert: &Path, key: &Path) -> Result<Ca> {
        let cert_pem = std::fs::read_to_string(cert)
            .map_err(io_err(format!("read CA certificate {}", cert.display())))?;
        let key_pem = std::fs::read_to_string(key)
            .map_err(io_err(format!("read CA key {}", key.display())))?;
        let key_pair = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair)?;
        let pin = spki_pin(&first_cert_der(&cert_pem)?)?;
        Ok(Ca {
            cert_pem,
            pin,
            issuer,
        })
    }

    /// What join tokens pin: `sha256:<hex>` of the CA's public key info.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// A server certificate for the controller's names, chained with the CA
    /// (so an agent holding only the pin can find and check the CA), and its key.
    pub fn issue_server(&self, names: &[String], ttl: Duration) -> Result<(String, String)> {
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "slipway-controller");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        (params.not_before, params.not_after) = validity(ttl);
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key_pair.serialize_pem(),
        ))
    }

    /// A client certificate for an enrolled agent. Only the CSR's public key is
    /// taken (its signature proves the agent holds the private key); the names
    /// are `host` (CN and SAN `<host>.<tenant>.agent.slipway`), never CA rights.
    pub fn issue_agent(
        &self,
        csr_pem: &str,
        tenant: &str,
        host: &str,
        ttl: Duration,
    ) -> Result<Issued> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TrustError::Invalid(format!("bad certificate signing request: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params
            .distinguished_name
            .push(DnType::OrganizationName, tenant);
        params.subject_alt_names = vec![SanType::DnsName(
            format!("{host}.{tenant}.agent.slipway").try_into()?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        (params.not_before, params.not_after) = validity(ttl);
        let not_after = params.not_after.unix_timestamp();
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            not_after,
        })
    }

    /// A client certificate for this controller replica to call the others
    /// with (SAN `replica.slipway`, client auth only), and its key.
    pub fn issue_replica(&self, ttl: Duration) -> Result<(String, String)> {
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![REPLICA_NAME.to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "slipway-controller-replica");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        (params.not_before, params.not_after) = validity(ttl);
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok((cert.pem(), key_pair.serialize_pem()))
    }
}

/// The one name a controller replica's certificates carry for the others:
/// the client certificate a replica presents when it calls another
/// (`Replicas`), and the name it checks on the server it called. Agents'
/// certificates are `<host>.<tenant>.agent.slipway`, so never this.
pub const REPLICA_NAME: &str = "replica.slipway";

/// Whether a client certificate (already checked against the CA by the TLS
/// handshake) is a controller replica's: its only DNS name is
/// `replica.slipway` and it is for client auth.
pub fn is_replica_cert(cert_der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
                _ => None,
            })
            .collect::<Option<Vec<_>>>(),
        _ => None,
    };
    let client_auth = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth);
    names.as_deref() == Some(&[REPLICA_NAME][..]) && client_auth
}

/// Checks that `csr_pem` is a CSR `Ca::issue_agent` accepts (parses, and its
/// signature holds), without issuing anything: enrollment checks it before it
/// burns the join token.
pub fn check_csr(csr_pem: &str) -> Result<()> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(|e| TrustError::Invalid(format!("bad certificate signing request: {e}")))
}

/// A fresh agent key pair and a CSR for it: `(key_pem, csr_pem)`.
pub fn agent_key_and_csr(host: &str) -> Result<(String, String)> {
    let key_pair = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, host);
    let csr = params.serialize_request(&key_pair)?;
    Ok((key_pair.serialize_pem(), csr.pem()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_certificates_carry_only_names_the_ca_chose() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        // Loading again gives the same CA.
        assert_eq!(Ca::load_or_create(dir.path()).unwrap().pin(), ca.pin());

        // A CSR that asks for another host's name and for CA rights.
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["other-host.default.agent.slipway".into()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "other-host");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();

        let issued = ca
            .issue_agent(&csr, "default", "web-1", Duration::from_secs(3600))
            .unwrap();
        let der = first_cert_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, vec!["web-1"]);
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            format!("{:?}", san.general_names),
            "[DNSName(\"web-1.default.agent.slipway\")]"
        );
        let bc = cert.basic_constraints().unwrap().map(|b| b.value.ca);
        assert_eq!(bc, Some(false), "no CA rights");
        assert_eq!(issued.fingerprint, fingerprint(&der));
        // The key in the certificate is the CSR's.
        assert_eq!(
            cert.tbs_certificate.subject_pki.raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
        assert!(
            ca.issue_agent("not a csr", "default", "web-1", Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn only_a_replica_certificate_reads_as_a_replica() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let der = |pem: &str| first_cert_der(pem).unwrap();
        let (replica, _) = ca.issue_replica(Duration::from_secs(60)).unwrap();
        assert!(is_replica_cert(&der(&replica)));
        // A host named "replica" in a tenant named "slipway" is still an agent.
        let (_, csr) = agent_key_and_csr("replica").unwrap();
        let agent = ca
            .issue_agent(&csr, "slipway", "replica", Duration::from_secs(60))
            .unwrap();
        assert!(!is_replica_cert(&der(&agent.cert_pem)));
        // The server certificate names it but is no client certificate.
        let (server, _) = ca
            .issue_server(&[REPLICA_NAME.into()], Duration::from_secs(60))
            .unwrap();
        assert!(!is_replica_cert(&der(&server)));
        assert!(!is_replica_cert(b"not a certificate"));
    }
}
