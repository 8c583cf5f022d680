//! Building a `kube::Client` from the configured credentials.

use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};

use super::{Credentials, KubeError};

/// The client config for `credentials`, with `namespace` as its default namespace.
pub async fn client_config(
    credentials: &Credentials,
    namespace: &str,
) -> Result<Config, KubeError> {
    let mut config = match credentials {
        Credentials::InCluster => {
            Config::incluster().map_err(|e| KubeError::Credentials(e.to_string()))?
        }
        Credentials::Kubeconfig { path, context } => {
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            match path {
                Some(p) => {
                    let kc = Kubeconfig::read_from(p)
                        .map_err(|e| KubeError::Credentials(format!("{}: {e}", p.display())))?;
                    Config::from_custom_kubeconfig(kc, &options)
                        .await
                        .map_err(|e| KubeError::Credentials(format!("{}: {e}", p.display())))?
                }
                None => Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| KubeError::Credentials(e.to_string()))?,
            }
        }
    };
    config.default_namespace = namespace.to_string();
    Ok(config)
}

/// A client for `credentials`. Reads files only; does not contact the API
/// server (an unreachable one shows in the watchers' snapshots).
pub async fn build_client(credentials: &Credentials, namespace: &str) -> Result<Client, KubeError> {
    crate::observe::tls::ensure_provider();
    let config = client_config(credentials, namespace).await?;
    Client::try_from(config).map_err(|e| KubeError::Credentials(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: one
  cluster: {server: "https://one.example:6443", insecure-skip-tls-verify: true}
- name: two
  cluster: {server: "https://two.example:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: "abc"}
contexts:
- name: first
  context: {cluster: one, user: u}
- name: second
  context: {cluster: two, user: u}
current-context: first
"#;

    #[tokio::test]
    async fn kubeconfig_path_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, KUBECONFIG).unwrap();
        let current = client_config(
            &Credentials::Kubeconfig {
                path: Some(path.clone()),
                context: None,
            },
            "db",
        )
        .await
        .unwrap();
        assert_eq!(current.cluster_url.host(), Some("one.example"));
        assert_eq!(current.default_namespace, "db");
        let second = client_config(
            &Credentials::Kubeconfig {
                path: Some(path.clone()),
                context: Some("second".into()),
            },
            "db",
        )
        .await
        .unwrap();
        assert_eq!(second.cluster_url.host(), Some("two.example"));
        let missing = client_config(
            &Credentials::Kubeconfig {
                path: Some(dir.path().join("absent")),
                context: None,
            },
            "db",
        )
        .await
        .unwrap_err();
        assert_eq!(missing.kind(), "credentials");
        let bad_context = client_config(
            &Credentials::Kubeconfig {
                path: Some(path),
                context: Some("third".into()),
            },
            "db",
        )
        .await
        .unwrap_err();
        assert_eq!(bad_context.kind(), "credentials");
    }
}
