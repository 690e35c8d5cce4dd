//! Modules served by a web server: `http(s)://host/x.wasm`, optionally pinned with
//! `@sha256:<hex>`. The download streams into the store, capped in size and hashed on
//! the way, so a wrong pin or an oversized body is refused without holding it in memory.

use std::time::Duration;

use reqwest::StatusCode;

use super::store::{Store, Stored};
use super::FetchError;

/// Builds the client used for module URLs.
pub(crate) fn build_client(
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<reqwest::Client, FetchError> {
    super::oci::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .user_agent(concat!("wasmkube/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Client {
            what: "HTTP",
            detail: super::error::error_chain(&e),
        })
}

/// Downloads `url` into the store; `expected_hex` is the pinned digest, if any.
pub(crate) async fn download(
    client: &reqwest::Client,
    store: &Store,
    url: &str,
    image: &str,
    expected_hex: Option<&str>,
    limit: u64,
) -> Result<Stored, FetchError> {
    tracing::info!(image, url, "downloading module");
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| FetchError::network(image, &e))?;
    let status = response.status();
    if !status.is_success() {
        let detail = format!("GET {url} answered {status}");
        return Err(match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => FetchError::NotFound {
                image: image.to_string(),
                detail,
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => FetchError::Unauthorized {
                image: image.to_string(),
                detail,
            },
            _ => FetchError::HttpStatus {
                image: image.to_string(),
                url: url.to_string(),
                status: status.to_string(),
            },
        });
    }
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(FetchError::TooLarge {
            image: image.to_string(),
            limit,
        });
    }
    let mut writer = store.writer(image, limit).await?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::network(image, &e))?
    {
        writer.write(&chunk).await?;
    }
    writer.finish(expected_hex).await
}
