//! A minimal IMDSv2 client: the new machine's addresses come from the instance metadata service.
//!
//! Two plain HTTP/1.1 requests over a socket with short timeouts (a token PUT, then a GET): not
//! worth an HTTP stack, and off EC2 it must fail fast rather than hang. The endpoint follows the
//! standard `AWS_EC2_METADATA_SERVICE_ENDPOINT` variable; `AWS_EC2_METADATA_DISABLED=true`
//! turns it off.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TIMEOUT: Duration = Duration::from_secs(1);

/// The instance metadata service, if this process may use it.
#[derive(Debug, Clone)]
pub(crate) struct Imds {
    host_port: String,
}

impl Imds {
    /// The service named by the environment, or `None` when it is disabled.
    pub(crate) fn from_env() -> Option<Imds> {
        if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return None;
        }
        let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned());
        let host_port = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let host_port = if host_port.contains(':') {
            host_port
        } else {
            format!("{host_port}:80")
        };
        Some(Imds { host_port })
    }

    /// A metadata value such as `local-ipv4`, or `None` when there is none (or no service).
    pub(crate) fn get(&self, path: &str) -> Option<String> {
        let token = self.request(
            "PUT",
            "/latest/api/token",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
        )?;
        let value = self.request(
            "GET",
            &format!("/latest/meta-data/{path}"),
            &format!("X-aws-ec2-metadata-token: {}", token.trim()),
        )?;
        let value = value.trim().to_owned();
        (!value.is_empty()).then_some(value)
    }

    fn request(&self, method: &str, path: &str, header: &str) -> Option<String> {
        let address = self.host_port.to_socket_addrs().ok()?.next()?;
        let mut stream = TcpStream::connect_timeout(&address, TIMEOUT).ok()?;
        stream.set_read_timeout(Some(TIMEOUT)).ok()?;
        stream.set_write_timeout(Some(TIMEOUT)).ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{header}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.host_port
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?;
        (status == "200").then(|| body.to_owned())
    }
}
