//! Turns a request line into an [`Endpoint`] before any handler runs.
//!
//! Repository names contain any number of `/`, so `/v2/<name>/...` is parsed from the right:
//! the suffix (`manifests/<ref>`, `blobs/<digest>`, `blobs/uploads/<id>`, `tags/list`,
//! `referrers/<digest>`) decides the endpoint and everything before it is the name. This is a
//! pure function; every routing rule is unit-tested below.

use berth_oci::{Digest, NameError, Reference, RepositoryName};
use http::Method;

use crate::error::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: RepositoryName },
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        name: RepositoryName,
        reference: Reference,
    },
    /// `/v2/<name>/manifests/<reference>` where the reference is not a valid tag: nothing can
    /// exist under it (a read is `MANIFEST_UNKNOWN`), and nothing may be pushed to it
    /// (`TAG_INVALID`).
    InvalidTag {
        name: RepositoryName,
        reference: String,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob {
        name: RepositoryName,
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: RepositoryName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: RepositoryName, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers {
        name: RepositoryName,
        digest: Digest,
    },
}

impl Endpoint {
    /// The repository the endpoint is about, if any.
    pub fn repository(&self) -> Option<&RepositoryName> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { name }
            | Endpoint::Manifest { name, .. }
            | Endpoint::InvalidTag { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::UploadStart { name }
            | Endpoint::Upload { name, .. }
            | Endpoint::Referrers { name, .. } => Some(name),
        }
    }
}

impl Endpoint {
    /// The methods the endpoint takes, as an `Allow` header lists them.
    pub fn allowed_methods(&self) -> &'static [Method] {
        match self {
            Endpoint::Base => &[Method::GET, Method::HEAD],
            Endpoint::Catalog | Endpoint::Tags { .. } | Endpoint::Referrers { .. } => {
                &[Method::GET]
            }
            Endpoint::Manifest { .. } | Endpoint::InvalidTag { .. } => {
                &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE]
            }
            Endpoint::Blob { .. } => &[Method::GET, Method::HEAD, Method::DELETE],
            Endpoint::UploadStart { .. } => &[Method::POST],
            Endpoint::Upload { .. } => &[Method::GET, Method::PATCH, Method::PUT, Method::DELETE],
        }
    }
}

fn name(s: &str) -> Result<RepositoryName, ApiError> {
    s.parse().map_err(ApiError::from)
}

fn digest(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(ApiError::from)
}

/// Parses a request path. `Ok(None)` means the path is not part of the registry API.
pub fn parse(path: &str) -> Result<Option<Endpoint>, ApiError> {
    let decoded;
    let path = if path.contains('%') {
        decoded = path.replace("%3A", ":").replace("%3a", ":");
        decoded.as_str()
    } else {
        path
    };
    let Some(rest) = path.strip_prefix("/v2") else {
        return Ok(None);
    };
    let rest = match rest {
        "" | "/" => return Ok(Some(Endpoint::Base)),
        _ => match rest.strip_prefix('/') {
            Some(r) => r,
            None => return Ok(None),
        },
    };
    if rest == "_catalog" {
        return Ok(Some(Endpoint::Catalog));
    }
    if let Some(n) = rest.strip_suffix("/tags/list") {
        return Ok(Some(Endpoint::Tags { name: name(n)? }));
    }
    if let Some(n) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Some(Endpoint::UploadStart { name: name(n)? }));
    }
    let Some((head, last)) = rest.rsplit_once('/') else {
        return Ok(None);
    };
    let Some((n, kind)) = head.rsplit_once('/') else {
        return Ok(None);
    };
    let endpoint = match kind {
        "manifests" => {
            let name = name(n)?;
            match last.parse::<Reference>() {
                Ok(reference) => Endpoint::Manifest { name, reference },
                Err(NameError::InvalidTag(_)) => Endpoint::InvalidTag {
                    name,
                    reference: last.to_owned(),
                },
                Err(e) => return Err(e.into()),
            }
        }
        "blobs" => Endpoint::Blob {
            name: name(n)?,
            digest: digest(last)?,
        },
        "referrers" => Endpoint::Referrers {
            name: name(n)?,
            digest: digest(last)?,
        },
        "uploads" => match n.strip_suffix("/blobs") {
            Some(n) => Endpoint::Upload {
                name: name(n)?,
                id: last.to_owned(),
            },
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some(endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_oci::ErrorCode;

    fn ok(path: &str) -> Endpoint {
        parse(path).unwrap().unwrap()
    }

    fn code(path: &str) -> ErrorCode {
        parse(path).unwrap_err().code()
    }

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn base_and_catalog() {
        assert_eq!(ok("/v2/"), Endpoint::Base);
        assert_eq!(ok("/v2"), Endpoint::Base);
        assert_eq!(ok("/v2/_catalog"), Endpoint::Catalog);
        assert_eq!(parse("/v3/").unwrap(), None);
        assert_eq!(parse("/v2x").unwrap(), None);
    }

    #[test]
    fn deep_names_parse_from_the_right() {
        let Endpoint::Manifest { name, reference } = ok("/v2/a/manifests/b/manifests/v1") else {
            panic!()
        };
        assert_eq!(name.as_str(), "a/manifests/b");
        assert_eq!(reference.to_string(), "v1");
        let Endpoint::Tags { name } = ok("/v2/a/b/c/d/e/f/g/h/tags/list") else {
            panic!()
        };
        assert_eq!(name.as_str(), "a/b/c/d/e/f/g/h");
        let Endpoint::Blob { name, digest } = ok(&format!("/v2/x/y/blobs/{D}")) else {
            panic!()
        };
        assert_eq!((name.as_str(), digest.as_str()), ("x/y", D));
        let Endpoint::Blob { digest, .. } = ok(&format!("/v2/x/blobs/{}", D.replace(':', "%3A")))
        else {
            panic!()
        };
        assert_eq!(digest.as_str(), D);
    }

    #[test]
    fn uploads() {
        assert!(matches!(
            ok("/v2/x/blobs/uploads/"),
            Endpoint::UploadStart { .. }
        ));
        assert!(matches!(
            ok("/v2/x/blobs/uploads"),
            Endpoint::UploadStart { .. }
        ));
        let Endpoint::Upload { name, id } = ok("/v2/x/y/blobs/uploads/abc-123") else {
            panic!()
        };
        assert_eq!((name.as_str(), id.as_str()), ("x/y", "abc-123"));
        assert!(matches!(
            ok(&format!("/v2/x/referrers/{D}")),
            Endpoint::Referrers { .. }
        ));
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        assert_eq!(code("/v2/UPPER/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a//b/manifests/v1"), ErrorCode::NameInvalid);
        assert!(matches!(
            ok("/v2/a/manifests/.INVALID_MANIFEST_NAME"),
            Endpoint::InvalidTag { .. }
        ));
        assert_eq!(code("/v2/a/manifests/sha256:abc"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/sha256:abc"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/latest"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/referrers/nope"), ErrorCode::DigestInvalid);
        assert_eq!(parse("/v2/a/unknown/x").unwrap(), None);
        assert_eq!(parse("/v2/onlyname").unwrap(), None);
    }
}
