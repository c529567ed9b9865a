//! Manifest parsing and validation. The registry keeps the bytes exactly as pushed; this module
//! only reads them to learn what a manifest references (blobs, child manifests, a subject) and
//! what the referrers API reports about it.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest media type the registry stores; also what it accepts from `Accept` headers.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    OciImage,
    OciIndex,
    DockerImage,
    DockerList,
}

impl ManifestKind {
    pub fn from_media_type(media_type: &str) -> Option<ManifestKind> {
        match media_type {
            OCI_MANIFEST => Some(ManifestKind::OciImage),
            OCI_INDEX => Some(ManifestKind::OciIndex),
            DOCKER_MANIFEST => Some(ManifestKind::DockerImage),
            DOCKER_LIST => Some(ManifestKind::DockerList),
            _ => None,
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::OciImage => OCI_MANIFEST,
            ManifestKind::OciIndex => OCI_INDEX,
            ManifestKind::DockerImage => DOCKER_MANIFEST,
            ManifestKind::DockerList => DOCKER_LIST,
        }
    }

    pub fn is_index(self) -> bool {
        matches!(self, ManifestKind::OciIndex | ManifestKind::DockerList)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("Content-Type {content_type:?} does not match the manifest's mediaType {field:?}")]
    MediaTypeMismatch { content_type: String, field: String },
    #[error("an image manifest needs a config descriptor")]
    MissingConfig,
    #[error("an index needs a manifests array")]
    MissingManifests,
    #[error("descriptor digest {0:?} is invalid")]
    BadDescriptorDigest(String),
    #[error("descriptor size must not be negative")]
    NegativeSize,
    /// The image spec requires `mediaType`, `digest` and `size` in every descriptor.
    #[error("the {place} descriptor {digest} has no {field}")]
    MissingField {
        place: String,
        digest: String,
        field: &'static str,
    },
}

/// Content a manifest references, with the size its descriptor declares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Referenced {
    pub digest: Digest,
    pub size: u64,
}

/// A content descriptor as found inside manifests, leniently parsed.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    fn digest(&self) -> Result<Digest, ManifestError> {
        self.digest
            .parse()
            .map_err(|_| ManifestError::BadDescriptorDigest(self.digest.clone()))
    }

    /// Checks the fields every descriptor must carry; `place` names it in the error
    /// (`config`, `layers[2]`, `manifests[0]`, `subject`).
    fn referenced(&self, place: &str) -> Result<Referenced, ManifestError> {
        let missing = |field| ManifestError::MissingField {
            place: place.to_owned(),
            digest: self.digest.clone(),
            field,
        };
        if self.media_type.as_deref().is_none_or(str::is_empty) {
            return Err(missing("mediaType"));
        }
        let size = self.size.ok_or_else(|| missing("size"))?;
        let size = u64::try_from(size).map_err(|_| ManifestError::NegativeSize)?;
        Ok(Referenced {
            digest: self.digest()?,
            size,
        })
    }

    /// Foreign/non-distributable layers live elsewhere by design; a registry must accept a
    /// manifest that references them without having their bytes.
    fn is_non_distributable(&self) -> bool {
        let mt = self.media_type.as_deref().unwrap_or("");
        mt.contains("nondistributable")
            || mt.contains(".foreign.")
            || self.urls.as_ref().is_some_and(|u| !u.is_empty())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What the registry needs to know about a pushed manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub kind: ManifestKind,
    /// The media type the manifest is stored and served with.
    pub media_type: String,
    /// Blobs that must exist in the repository with the declared sizes (config and
    /// distributable layers).
    pub blobs: Vec<Referenced>,
    /// Child manifests of an index that must exist in the repository.
    pub children: Vec<Referenced>,
    pub subject: Option<Digest>,
    /// For the referrers API: `artifactType`, else the config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// Parses and validates `bytes` pushed with the given `Content-Type` (if any).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !c.is_empty() && *c != "application/json");
        let kind = match (content_type, raw.media_type.as_deref()) {
            (Some(ct), Some(field)) if ct != field => {
                return Err(ManifestError::MediaTypeMismatch {
                    content_type: ct.to_owned(),
                    field: field.to_owned(),
                })
            }
            (Some(mt), _) | (None, Some(mt)) => ManifestKind::from_media_type(mt)
                .ok_or_else(|| ManifestError::UnsupportedMediaType(mt.to_owned()))?,
            (None, None) if raw.manifests.is_some() => ManifestKind::OciIndex,
            (None, None) => ManifestKind::OciImage,
        };

        let mut blobs = Vec::new();
        let mut children = Vec::new();
        let mut artifact_type = raw.artifact_type.clone();
        if kind.is_index() {
            let manifests = raw
                .manifests
                .as_ref()
                .ok_or(ManifestError::MissingManifests)?;
            for (i, d) in manifests.iter().enumerate() {
                children.push(d.referenced(&format!("manifests[{i}]"))?);
            }
        } else {
            let config = raw.config.as_ref().ok_or(ManifestError::MissingConfig)?;
            blobs.push(config.referenced("config")?);
            if artifact_type.is_none() {
                artifact_type = config.media_type.clone();
            }
            for (i, layer) in raw.layers.iter().flatten().enumerate() {
                let referenced = layer.referenced(&format!("layers[{i}]"))?;
                if !layer.is_non_distributable() {
                    blobs.push(referenced);
                }
            }
        }
        let subject = raw
            .subject
            .as_ref()
            .map(|d| d.referenced("subject").map(|r| r.digest))
            .transpose()?;
        blobs.sort();
        blobs.dedup();
        children.sort();
        children.dedup();
        Ok(Manifest {
            kind,
            media_type: kind.media_type().to_owned(),
            blobs,
            children,
            subject,
            artifact_type,
            annotations: raw.annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}},
                      {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{}","size":3,"urls":["https://x"]}}]
            {extra}}}"#,
            d('a'),
            d('b'),
            d('c')
        )
    }

    #[test]
    fn image_manifest_references() {
        let m = Manifest::parse(image("").as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::OciImage);
        let blobs: Vec<_> = m.blobs.iter().map(|b| b.digest.to_string()).collect();
        assert_eq!(blobs, vec![d('a'), d('b')], "foreign layer must be skipped");
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(m.subject.is_none());
    }

    #[test]
    fn subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1}}"#,
            d('e')
        );
        let m = Manifest::parse(image(&extra).as_bytes(), None).unwrap();
        assert_eq!(m.subject.unwrap().to_string(), d('e'));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sig"));
    }

    #[test]
    fn index_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":7}}]}}"#,
            d('f')
        );
        let m = Manifest::parse(body.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert!(m.kind.is_index());
        assert_eq!(m.children.len(), 1);
        assert!(m.blobs.is_empty());
    }

    #[test]
    fn rejects_invalid() {
        assert!(matches!(
            Manifest::parse(b"{not json", None),
            Err(ManifestError::Json(_))
        ));
        assert_eq!(
            Manifest::parse(br#"{"schemaVersion":1}"#, None).unwrap_err(),
            ManifestError::SchemaVersion
        );
        assert!(matches!(
            Manifest::parse(image("").as_bytes(), Some(OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#, None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        assert_eq!(
            Manifest::parse(br#"{"schemaVersion":2}"#, Some(OCI_MANIFEST)).unwrap_err(),
            ManifestError::MissingConfig
        );
        let no_type = image("").replace(
            r#""mediaType":"application/vnd.oci.image.config.v1+json","#,
            "",
        );
        assert!(matches!(
            Manifest::parse(no_type.as_bytes(), None),
            Err(ManifestError::MissingField {
                field: "mediaType",
                ..
            })
        ));
        let no_size = image("").replace(r#","size":3}"#, "}");
        let err = Manifest::parse(no_size.as_bytes(), None).unwrap_err();
        assert!(err.to_string().contains("layers[0]"), "{err}");
        let bad_digest = image("").replace(&d('b'), "sha256:nothex");
        assert!(matches!(
            Manifest::parse(bad_digest.as_bytes(), None),
            Err(ManifestError::BadDescriptorDigest(_))
        ));
    }
}
