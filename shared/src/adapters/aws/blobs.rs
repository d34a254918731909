use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;

use super::describe;
use crate::ports::{BlobError, BlobKey, BlobStore};

/// Blobs in the stack's S3 bucket (encrypted at rest, private, expired by a
/// lifecycle rule matching the table's TTL).
#[derive(Clone)]
pub struct S3Blobs {
    client: Client,
    bucket: String,
}

impl S3Blobs {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3Blobs {
            client,
            bucket: bucket.into(),
        }
    }
}

fn backend<E: std::error::Error>(err: E) -> BlobError {
    BlobError::Backend(describe(err))
}

#[async_trait]
impl BlobStore for S3Blobs {
    #[tracing::instrument(skip_all, fields(key = key.as_str(), bytes = body.len()))]
    async fn put(&self, key: &BlobKey, body: Vec<u8>) -> Result<(), BlobError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type("text/plain; charset=utf-8")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(key = key.as_str()))]
    async fn get(&self, key: &BlobKey) -> Result<Option<Vec<u8>>, BlobError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let body = out.body.collect().await.map_err(backend)?;
        Ok(Some(body.into_bytes().to_vec()))
    }
}
