//! The Docker engine, through bollard. Every connection negotiates the API
//! version first: Debian's engine speaks 1.41 and refuses bollard's newer
//! default.
//!
//! This module only moves bytes and calls the engine; it makes no
//! decisions. The builder uses it through the blocking [`BlockingEngine`],
//! which implements [`crate::build::run::RunEngine`].

use std::path::Path;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ImportImageOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};

use crate::build::run::{RunEngine, RunFailure};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("docker engine: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Connects to the local engine (`DOCKER_HOST` or the unix socket) and
/// negotiates the API version.
pub async fn connect() -> Result<Docker, EngineError> {
    let endpoint = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
    let err = |reason: String| EngineError::Connect {
        endpoint: endpoint.clone(),
        reason,
    };
    let docker = Docker::connect_with_local_defaults().map_err(|e| err(e.to_string()))?;
    let docker = docker.negotiate_version().await.map_err(|e| err(e.to_string()))?;
    docker.ping().await.map_err(|e| err(e.to_string()))?;
    Ok(docker)
}

/// Streams a file as a request body.
async fn file_stream(path: &Path) -> Result<tokio_util::io::ReaderStream<tokio::fs::File>, EngineError> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20))
}

/// `docker load` of a docker-archive file.
pub async fn load(docker: &Docker, archive: &Path) -> Result<(), EngineError> {
    let body = bollard::body_try_stream(file_stream(archive).await?);
    let opts = ImportImageOptionsBuilder::default().quiet(true).build();
    let mut s = docker.import_image(opts, body, None);
    while let Some(item) = s.next().await {
        item?;
    }
    Ok(())
}

/// `docker pull IMAGE` (e.g. from the agent's loopback registry).
pub async fn pull(docker: &Docker, image: &str) -> Result<(), EngineError> {
    let opts = CreateImageOptionsBuilder::default().from_image(image).build();
    let mut s = docker.create_image(Some(opts), None, None);
    while let Some(item) = s.next().await {
        item?;
    }
    Ok(())
}

/// The combined stdout and stderr of a container, last `tail` lines.
pub async fn logs(docker: &Docker, id: &str, tail: usize) -> String {
    let opts = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&tail.to_string())
        .build();
    let chunks: Vec<_> = docker.logs(id, Some(opts)).collect().await;
    chunks
        .into_iter()
        .filter_map(|c| c.ok())
        .map(|c| String::from_utf8_lossy(&c.into_bytes()).into_owned())
        .collect()
}

/// The builder's engine: a current-thread runtime around a connection.
pub struct BlockingEngine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
}

impl BlockingEngine {
    pub fn connect() -> Result<BlockingEngine, EngineError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| EngineError::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        let docker = rt.block_on(connect())?;
        Ok(BlockingEngine { rt, docker })
    }

    async fn run_inner(&self, image: &str, files: Option<&Path>, script: &str) -> Result<String, RunFailure> {
        let d = &self.docker;
        let api = |e: bollard::errors::Error| RunFailure::Engine(e.to_string());
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into(), script.to_string()]),
            cmd: Some(vec![]),
            user: Some("0:0".to_string()),
            ..Default::default()
        };
        let name = format!(
            "strata-run-{}-{}",
            std::process::id(),
            image.rsplit('-').next().unwrap_or("0")
        );
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let id = d.create_container(Some(opts), body).await.map_err(api)?.id;
        let result = async {
            if let Some(f) = files {
                let stream = file_stream(f)
                    .await
                    .map_err(|e| RunFailure::Engine(e.to_string()))?;
                let body = bollard::body_try_stream(stream);
                let opts = UploadToContainerOptionsBuilder::default().path("/").build();
                d.upload_to_container(&id, Some(opts), body).await.map_err(api)?;
            }
            d.start_container(&id, None).await.map_err(api)?;
            let waited: Vec<_> = d.wait_container(&id, None).collect().await;
            let code = match waited.into_iter().last() {
                Some(Ok(r)) => r.status_code,
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => return Err(api(e)),
                None => -1,
            };
            if code != 0 {
                return Err(RunFailure::Exit {
                    code,
                    output: logs(d, &id, 40).await,
                });
            }
            let opts = CommitContainerOptionsBuilder::default().container(&id).build();
            let committed = d
                .commit_container(opts, bollard::models::ContainerConfig::default())
                .await
                .map_err(api)?;
            Ok(committed.id)
        }
        .await;
        let rm = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = d.remove_container(&id, Some(rm)).await;
        result
    }
}

impl RunEngine for BlockingEngine {
    fn load(&self, archive: &Path) -> Result<(), String> {
        self.rt
            .block_on(load(&self.docker, archive))
            .map_err(|e| e.to_string())
    }

    fn run_and_commit(&self, image: &str, files: Option<&Path>, script: &str) -> Result<String, RunFailure> {
        self.rt.block_on(self.run_inner(image, files, script))
    }

    fn save(&self, image: &str, dest: &Path) -> Result<(), String> {
        self.rt.block_on(async {
            let mut f = tokio::fs::File::create(dest).await.map_err(|e| e.to_string())?;
            let mut s = self.docker.export_image(image).map_err(|e| e.to_string());
            while let Some(chunk) = s.next().await {
                tokio::io::AsyncWriteExt::write_all(&mut f, &chunk?)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tokio::io::AsyncWriteExt::flush(&mut f)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn remove_image(&self, image: &str) {
        let opts = RemoveImageOptionsBuilder::default().force(true).build();
        let _ = self
            .rt
            .block_on(self.docker.remove_image(image, Some(opts), None));
    }
}
