//! Request body decoding for OTLP/HTTP: content encoding (gzip, zstd, deflate) and content type
//! (protobuf, JSON).
//!
//! Decompression is bounded by the same limit as the wire body: the decoder stops one byte past
//! the limit, so a small body that inflates to gigabytes (a "gzip bomb") is refused after
//! inflating only `limit + 1` bytes. Stock decompression layers have no such bound.

use std::io::Read;

use bytes::Bytes;

use super::json::{self, JsonError};
use super::validate::Rejection;
use crate::otlp::wire::{self, ResourceBlock, WireError};

/// The body's `Content-Encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentEncoding {
    /// No encoding (header absent or `identity`).
    Identity,
    /// `gzip`.
    Gzip,
    /// `zstd`.
    Zstd,
    /// `deflate`: zlib-wrapped per RFC 9110, or raw deflate as some clients send.
    Deflate,
}

impl ContentEncoding {
    /// Parses a `Content-Encoding` header value.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnsupportedEncoding`] naming the value.
    pub fn parse(header: Option<&str>) -> Result<Self, DecodeError> {
        let Some(value) = header.map(str::trim) else {
            return Ok(Self::Identity);
        };
        match value.to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(Self::Identity),
            "gzip" | "x-gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            "deflate" => Ok(Self::Deflate),
            _ => Err(DecodeError::UnsupportedEncoding(value.to_string())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Deflate => "deflate",
        }
    }
}

/// The body's `Content-Type`: the two OTLP/HTTP encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

impl ContentType {
    /// Parses a `Content-Type` header, ignoring parameters such as `charset`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnsupportedContentType`] naming the value.
    pub fn parse(header: Option<&str>) -> Result<Self, DecodeError> {
        let value = header.unwrap_or("");
        let essence = value.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Self::Protobuf),
            "application/json" => Ok(Self::Json),
            _ => Err(DecodeError::UnsupportedContentType(value.to_string())),
        }
    }

    /// The header value responses use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

/// Why a body could not be decoded. Every variant is the client's fault (HTTP 4xx).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A `Content-Encoding` traceloom does not support.
    #[error("unsupported content-encoding {0:?}: use gzip, zstd, deflate or identity")]
    UnsupportedEncoding(String),
    /// A `Content-Type` that is not an OTLP/HTTP encoding.
    #[error("unsupported content-type {0:?}: use application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    /// The body, on the wire or after decompression, is larger than allowed.
    #[error("request body larger than the limit of {limit} bytes{after}")]
    TooLarge {
        /// The configured limit in bytes.
        limit: usize,
        /// `" after decompression"` when the decompressed size broke the limit.
        after: &'static str,
    },
    /// The compressed stream is corrupt.
    #[error("{encoding} body could not be decompressed: {source}")]
    Decompress {
        /// The encoding that failed.
        encoding: &'static str,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// The body is not a protobuf `ExportTraceServiceRequest`.
    #[error("invalid protobuf ExportTraceServiceRequest: {0}")]
    Protobuf(#[from] WireError),
    /// The body is not OTLP/JSON.
    #[error(transparent)]
    Json(#[from] JsonError),
}

/// Decompresses `body`, refusing output larger than `limit` bytes.
///
/// # Errors
///
/// [`DecodeError::TooLarge`] past the limit, [`DecodeError::Decompress`] on a corrupt stream.
pub fn decompress(
    body: Bytes,
    encoding: ContentEncoding,
    limit: usize,
) -> Result<Bytes, DecodeError> {
    let inflated = match encoding {
        ContentEncoding::Identity => return Ok(body),
        ContentEncoding::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(&body[..]), limit),
        ContentEncoding::Zstd => {
            zstd::stream::read::Decoder::new(&body[..]).and_then(|d| read_bounded(d, limit))
        }
        ContentEncoding::Deflate => read_bounded(flate2::read::ZlibDecoder::new(&body[..]), limit)
            .or_else(|_| read_bounded(flate2::read::DeflateDecoder::new(&body[..]), limit)),
    }
    .map_err(|source| DecodeError::Decompress {
        encoding: encoding.name(),
        source,
    })?;
    if inflated.len() > limit {
        return Err(DecodeError::TooLarge {
            limit,
            after: " after decompression",
        });
    }
    Ok(inflated.into())
}

fn read_bounded(reader: impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// Reads a protobuf `ExportTraceServiceRequest`: resources and scopes decoded, each span's ids
/// and times read and the rest of its encoding checked ([`crate::otlp::wire`]).
///
/// # Errors
///
/// When `body` is not a valid request, naming where.
pub fn decode_protobuf(body: &Bytes) -> Result<Vec<ResourceBlock>, WireError> {
    wire::read_resource_spans(body, 1)
}

/// A decoded body: resource spans, and spans refused while decoding.
pub type DecodedBody = (Vec<ResourceBlock>, Vec<Rejection>);

/// Decodes an uncompressed body.
///
/// # Errors
///
/// [`DecodeError::Protobuf`] or [`DecodeError::Json`] with what failed and where.
pub fn decode_body(body: Bytes, content_type: ContentType) -> Result<DecodedBody, DecodeError> {
    match content_type {
        ContentType::Protobuf => Ok((decode_protobuf(&body)?, Vec::new())),
        ContentType::Json => {
            let (resource_spans, prior) = json::decode_request(&body)?;
            Ok((wire::blocks_of(&resource_spans)?, prior))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap().into()
    }

    #[test]
    fn parses_encodings_and_names_unknown_ones() {
        assert_eq!(
            ContentEncoding::parse(None).unwrap(),
            ContentEncoding::Identity
        );
        assert_eq!(
            ContentEncoding::parse(Some("GZIP")).unwrap(),
            ContentEncoding::Gzip
        );
        assert_eq!(
            ContentEncoding::parse(Some(" zstd ")).unwrap(),
            ContentEncoding::Zstd
        );
        let err = ContentEncoding::parse(Some("br")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported content-encoding \"br\": use gzip, zstd, deflate or identity"
        );
    }

    #[test]
    fn parses_content_types_with_parameters() {
        let ct = ContentType::parse(Some("application/json; charset=utf-8")).unwrap();
        assert_eq!(ct, ContentType::Json);
        assert!(matches!(
            ContentType::parse(Some("text/plain")),
            Err(DecodeError::UnsupportedContentType(v)) if v == "text/plain"
        ));
        assert!(ContentType::parse(None).is_err());
    }

    #[test]
    fn every_encoding_round_trips() {
        let data = b"hello otlp".repeat(100);
        assert_eq!(
            decompress(gzip(&data), ContentEncoding::Gzip, 10_000).unwrap(),
            data
        );
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(
            decompress(z.into(), ContentEncoding::Zstd, 10_000).unwrap(),
            data
        );
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zl.write_all(&data).unwrap();
        let zl = zl.finish().unwrap();
        assert_eq!(
            decompress(zl.into(), ContentEncoding::Deflate, 10_000).unwrap(),
            data
        );
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&data).unwrap();
        let raw = raw.finish().unwrap();
        assert_eq!(
            decompress(raw.into(), ContentEncoding::Deflate, 10_000).unwrap(),
            data
        );
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_limit() {
        // 64 MiB of zeros compresses to ~64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        let err = decompress(bomb, ContentEncoding::Gzip, 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request body larger than the limit of 1048576 bytes after decompression"
        );
    }

    #[test]
    fn corrupt_streams_are_reported_with_their_encoding() {
        let err =
            decompress(Bytes::from_static(b"not gzip"), ContentEncoding::Gzip, 100).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("gzip body could not be decompressed"),
            "{err}"
        );
    }
}
