//! AWS KMS for key files wrapped by a KMS key (see `keyring`), reached through the standard AWS
//! chain (so `AWS_ENDPOINT_URL_KMS` points it at a local stand-in) in the step's region.

use std::time::Duration;

use backplan_aws::Meaning;
use backplan_aws::kms::{decrypt, generate_data_key};
use tokio::runtime::Runtime;

use crate::error::{Error, Result};
use crate::keyring::Kms;

/// A KMS client and the runtime it runs on.
pub struct AwsKms {
    client: backplan_aws::kms::Client,
    runtime: Runtime,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKms").finish_non_exhaustive()
    }
}

impl AwsKms {
    /// A client in `region` (default: the chain's, else us-east-1).
    pub fn connect(region: Option<&str>) -> Result<Self> {
        let runtime =
            backplan_aws::runtime::current_thread().map_err(|err| Error::Internal(err.message))?;
        let sdk = runtime.block_on(backplan_aws::load(&backplan_aws::Settings {
            region: region.map(str::to_owned),
            fallback_region: Some("us-east-1"),
            endpoint_url: None,
            max_attempts: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
        }));
        Ok(Self {
            client: backplan_aws::kms::client(&sdk, None),
            runtime,
        })
    }
}

/// The engine's view of a failed KMS call on `key_id`.
fn failed(call: &str, key_id: &str, failure: backplan_aws::Failure) -> Error {
    let message = format!("KMS {call} with key {key_id}: {}", failure.words);
    match failure.meaning {
        Meaning::Denied | Meaning::Unresolved | Meaning::NotFound => Error::Access(message),
        Meaning::Transient => Error::Backend {
            name: format!("KMS key {key_id}"),
            source: std::io::Error::other(message),
            transient: true,
        },
        // A ciphertext KMS does not accept (another key, damaged) opens nothing: the key
        // source is wrong for this repository.
        Meaning::Failed => Error::Encryption(message),
    }
}

impl Kms for AwsKms {
    fn generate_data_key(&self, key_id: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let key = self
            .runtime
            .block_on(generate_data_key(&self.client, key_id))
            .map_err(|f| failed("GenerateDataKey", key_id, f))?;
        Ok((key.plaintext, key.ciphertext))
    }

    fn decrypt(&self, key_id: &str, ciphertext: &[u8]) -> Result<Vec<u8>> {
        self.runtime
            .block_on(decrypt(&self.client, key_id, ciphertext))
            .map_err(|f| failed("Decrypt", key_id, f))
    }
}
