//! S3 clients. A bucket is addressed virtual-host style (`bucket.s3.amazonaws.com`) on AWS and
//! path style (`endpoint/bucket`) on an endpoint the user chose, which local stand-ins need;
//! a step can force either.

use aws_config::{Region, SdkConfig};
use aws_sdk_s3::Client;

use crate::config::endpoint_configured;

/// An S3 client in `region` (default: the configuration's); `force_path_style` `None` means
/// path style exactly when an endpoint is configured.
pub fn client(sdk: &SdkConfig, region: Option<&str>, force_path_style: Option<bool>) -> Client {
    let path_style = force_path_style.unwrap_or_else(|| endpoint_configured(sdk, "S3"));
    let mut builder = aws_sdk_s3::config::Builder::from(sdk).force_path_style(path_style);
    if let Some(region) = region {
        builder = builder.region(Region::new(region.to_owned()));
    }
    Client::from_conf(builder.build())
}

#[cfg(test)]
mod tests {
    use aws_config::BehaviorVersion;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};

    use super::*;
    use crate::{Failure, Meaning};

    /// A credential chain that finds nothing, as on a machine with no AWS setup at all.
    #[derive(Debug)]
    struct NoCredentials;

    impl ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            )))
        }
    }

    fn sdk(region: Option<&'static str>) -> SdkConfig {
        let mut builder = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(SharedCredentialsProvider::new(NoCredentials))
            // Nothing listens on port 9 of loopback: no request may leave this machine.
            .endpoint_url("http://127.0.0.1:9");
        if let Some(region) = region {
            builder = builder.region(Region::from_static(region));
        }
        builder.build()
    }

    async fn head_bucket(sdk: &SdkConfig) -> Failure {
        let error = client(sdk, None, None)
            .head_bucket()
            .bucket("b")
            .send()
            .await
            .unwrap_err();
        Failure::of(&error)
    }

    #[tokio::test]
    async fn a_machine_without_credentials_gets_a_configuration_error_not_retries() {
        let failure = head_bucket(&sdk(Some("us-east-1"))).await;
        assert_eq!(failure.meaning, Meaning::Unresolved, "{}", failure.words);
        assert!(
            failure.words.contains("no providers in chain"),
            "{}",
            failure.words
        );
    }

    #[tokio::test]
    async fn a_client_without_a_region_gets_a_configuration_error_not_retries() {
        let failure = head_bucket(&sdk(None)).await;
        assert_eq!(failure.meaning, Meaning::Unresolved, "{}", failure.words);
    }
}
