//! The SDK configuration: the standard AWS chain (environment, profiles, SSO, web identity,
//! IMDS; `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>` for another endpoint), with what a
//! step's configuration says on top. Tests therefore run the same code as production, pointed at
//! a local endpoint through the environment.

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use aws_smithy_types::error::display::DisplayErrorContext;
use backplan_plugin_sdk::{PluginError, PluginResult};

/// What a plugin sets beyond the standard chain; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The region, over the chain's.
    pub region: Option<String>,
    /// The region when neither `region` nor the chain names one (S3 answers "where is this
    /// bucket" from any region); `None` leaves the configuration without a region.
    pub fallback_region: Option<&'static str>,
    /// An endpoint for every service, over the chain's.
    pub endpoint_url: Option<String>,
    /// Attempts per call in the SDK's standard retry mode (default: the SDK's, 3).
    pub max_attempts: Option<u32>,
    /// How long to wait for a connection (default: the SDK's).
    pub connect_timeout: Option<Duration>,
    /// How long to wait for the next byte of an answer (default: none).
    pub read_timeout: Option<Duration>,
}

/// Loads the configuration: the standard chain, then `settings`.
pub async fn load(settings: &Settings) -> SdkConfig {
    let region = RegionProviderChain::first_try(settings.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(settings.fallback_region.map(Region::from_static));
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
    if let Some(attempts) = settings.max_attempts {
        loader = loader.retry_config(RetryConfig::standard().with_max_attempts(attempts));
    }
    if settings.connect_timeout.is_some() || settings.read_timeout.is_some() {
        let mut timeouts = TimeoutConfig::builder();
        timeouts
            .set_connect_timeout(settings.connect_timeout)
            .set_read_timeout(settings.read_timeout);
        loader = loader.timeout_config(timeouts.build());
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// Whether requests go to an endpoint the user chose (a local stand-in, a VPC endpoint) rather
/// than AWS's own: set in the configuration, or for `service` (`S3`, `EC2`) in the environment.
pub fn endpoint_configured(sdk: &SdkConfig, service: &str) -> bool {
    sdk.endpoint_url().is_some()
        || [
            format!("AWS_ENDPOINT_URL_{service}"),
            "AWS_ENDPOINT_URL".into(),
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Resolves credentials now, for `check`: the error says where they were looked for.
pub async fn check_credentials(sdk: &SdkConfig) -> PluginResult<()> {
    let provider = sdk
        .credentials_provider()
        .ok_or_else(|| PluginError::config("no AWS credentials provider is configured"))?;
    provider.provide_credentials().await.map(drop).map_err(|e| {
        PluginError::config(
            "no AWS credentials (environment, profile, SSO, web identity, IMDS were tried)",
        )
        .with_detail(DisplayErrorContext(&e).to_string())
    })
}
