//! bearerd's interception CA: generated at start (its key only in memory, its X.509 name
//! constraints limited to the intercepted hosts), or the operator's. It signs the leaves.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::InterceptError;
use crate::config::{HostPattern, OperatorCa};
use crate::tls::pem_certificate;

/// How long a generated CA is valid: it lives as long as the process, which may run for
/// years, and its key dies with it.
const GENERATED_CA_LIFETIME: Duration = Duration::from_hours(10 * 365 * 24);
/// Certificates start this long before they are made, for clients whose clock is behind.
pub(super) const CLOCK_SKEW: Duration = Duration::from_mins(5);
/// A name under the `.invalid` top-level domain (RFC 6761), which never resolves: permitted
/// when no DNS host is intercepted, so that the CA may sign no real name.
const NO_DNS_NAME: &str = "bearerd.invalid";

/// The CA that signs leaf certificates. `Debug` never shows its key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate first, then any certificates above it (an operator's chain).
    chain: Vec<CertificateDer<'static>>,
    pem: String,
    /// The hosts a generated CA may sign for; `None`: an operator CA, whose scope is the
    /// operator's.
    scope: Option<Vec<HostPattern>>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("scope", &self.scope)
            .field("chain_len", &self.chain.len())
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, as minted.
pub(super) struct MintedLeaf {
    /// The leaf first, then the CA's chain.
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivatePkcs8KeyDer<'static>,
}

impl Ca {
    /// A new CA (ECDSA P-256) whose name constraints permit `hosts` only: a host and its
    /// subdomains, `*.suffix` as the subtree `.suffix`, an IP address as itself.
    pub fn generate(hosts: &[HostPattern], now: SystemTime) -> Result<Self, InterceptError> {
        let fail = |err: rcgen::Error| InterceptError::Ca(format!("cannot generate the interception CA: {err}"));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "bearerd");
        // The start time tells this CA from those of earlier starts in a trust store.
        params.distinguished_name.push(
            DnType::CommonName,
            format!("bearerd interception CA {}", crate::config::format_timestamp(now)),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.name_constraints = Some(name_constraints(hosts));
        params.not_before = offset_time(now.checked_sub(CLOCK_SKEW).unwrap_or(now));
        params.not_after = offset_time(now + GENERATED_CA_LIFETIME);
        let certificate = params.self_signed(&key).map_err(fail)?;
        Ok(Self {
            pem: certificate.pem(),
            chain: vec![certificate.der().clone()],
            issuer: Issuer::new(params, key),
            scope: Some(hosts.to_vec()),
        })
    }

    /// The operator's CA: its certificate must be a CA's and its key must be the
    /// certificate's. Errors name the file, never the key's bytes.
    pub fn operator(ca: &OperatorCa) -> Result<Self, InterceptError> {
        let cert_error = |reason: String| InterceptError::OperatorCa {
            field: "ca_cert_file",
            file: ca.cert_file.display().to_string(),
            reason,
        };
        let key_error = |reason: String| InterceptError::OperatorCa {
            field: "ca_key_file",
            file: ca.key_file.display().to_string(),
            reason,
        };
        let certificate = &ca.chain[0];
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
            .map_err(|err| cert_error(format!("not an X.509 certificate: {err}")))?;
        if !parsed.is_ca() {
            return Err(cert_error(
                "the first certificate is not a CA certificate (basicConstraints CA:TRUE)".into(),
            ));
        }
        let key = KeyPair::try_from(&ca.key)
            .map_err(|err| key_error(format!("cannot use the key to sign certificates: {err}")))?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != parsed.tbs_certificate.subject_pki.raw {
            return Err(key_error(format!(
                "the key does not belong to the certificate in {}",
                ca.cert_file.display()
            )));
        }
        let issuer = Issuer::from_ca_cert_der(certificate, key)
            .map_err(|err| cert_error(format!("cannot sign with this CA certificate: {err}")))?;
        Ok(Self {
            pem: pem_certificate(certificate),
            chain: ca.chain.clone(),
            issuer,
            scope: None,
        })
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate.
    #[must_use]
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Whether a leaf for `host` (lowercase, no brackets) is one clients will accept: for a
    /// generated CA, whether an intercepted host at start names it; an operator CA owns its
    /// scope.
    #[must_use]
    pub fn permits(&self, host: &str) -> bool {
        self.scope
            .as_ref()
            .is_none_or(|hosts| hosts.iter().any(|pattern| pattern.matches(host, 0)))
    }

    /// A leaf for `host` (a DNS name or an IP address), ECDSA P-256, valid `ttl` from `now`
    /// (starting a little earlier, for clock skew). Does not ask [`Ca::permits`].
    pub(super) fn sign_leaf(&self, host: &str, ttl: Duration, now: SystemTime) -> Result<MintedLeaf, InterceptError> {
        let fail = |err: rcgen::Error| InterceptError::Mint {
            host: host.to_owned(),
            cause: err.to_string(),
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.subject_alt_names = vec![match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(fail)?),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset_time(now.checked_sub(CLOCK_SKEW).unwrap_or(now));
        params.not_after = offset_time(now + ttl);
        let leaf = params.signed_by(&key, &self.issuer).map_err(fail)?;
        let mut chain = Vec::with_capacity(1 + self.chain.len());
        chain.push(leaf.der().clone());
        chain.extend(self.chain.iter().cloned());
        Ok(MintedLeaf {
            chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }
}

/// Permits exactly the intercepted hosts. Names of a kind no host uses are still
/// constrained: with no permitted IP subtree every address is excluded, and with no DNS
/// host only a `.invalid` name is permitted (an X.509 constraint list that names no subtree
/// of a kind leaves that kind unconstrained).
fn name_constraints(hosts: &[HostPattern]) -> NameConstraints {
    let mut permitted: Vec<GeneralSubtree> = hosts
        .iter()
        .map(|host| match host {
            HostPattern::Suffix(suffix) => GeneralSubtree::DnsName(suffix.clone()),
            HostPattern::Host(name) | HostPattern::HostPort(name, _) => match name.parse::<IpAddr>() {
                Ok(ip) => {
                    GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, if ip.is_ipv4() { 32 } else { 128 }))
                }
                Err(_) => GeneralSubtree::DnsName(name.clone()),
            },
        })
        .collect();
    if !permitted
        .iter()
        .any(|subtree| matches!(subtree, GeneralSubtree::DnsName(_)))
    {
        permitted.push(GeneralSubtree::DnsName(NO_DNS_NAME.to_owned()));
    }
    let excluded = if permitted
        .iter()
        .any(|subtree| matches!(subtree, GeneralSubtree::IpAddress(_)))
    {
        Vec::new()
    } else {
        vec![
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([0; 4], 0)),
            GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix([0; 16], 0)),
        ]
    };
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

fn offset_time(time: SystemTime) -> time::OffsetDateTime {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
    time::OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
