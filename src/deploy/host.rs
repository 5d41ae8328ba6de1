//! One Docker engine, as the orchestrator uses it: networks with a fixed
//! subnet, containers with a fixed IP, exec, archive upload/download,
//! logs. Every connection negotiates the API version (Debian's 20.10
//! speaks 1.41). This file only calls the engine; what to call, and in
//! which order, is decided in `redeploy.rs` and `hotfix.rs`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkingConfig, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, KillContainerOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, TagImageOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};

use super::spec::{Driver, Endpoint, Ipv4Net, Network};
use super::{DeployError, Result};

/// What the orchestrator needs to know about a container.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub started_at: String,
    /// When it last stopped (empty while it runs or if it never did).
    pub finished_at: String,
    pub pid: i64,
    pub ip: Option<Ipv4Addr>,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// Env, binds and memory limit as the engine has them.
    pub live: super::desired::Live,
}

/// A container to create.
#[derive(Debug, Clone)]
pub struct NewContainer {
    pub name: String,
    pub image: String,
    pub hostname: String,
    pub ip: Ipv4Addr,
    pub env: Vec<String>,
    pub binds: Vec<String>,
    pub labels: HashMap<String, String>,
    pub stop_grace: Duration,
    pub memory_mib: Option<u64>,
    pub command: Option<Vec<String>>,
    pub user: Option<String>,
}

pub struct Host {
    pub endpoint: Endpoint,
    docker: Docker,
}

/// What an exec printed and its exit code.
pub struct ExecOutput {
    pub code: i64,
    pub output: String,
}

/// Docker's MAC for an IPv4 address (02:42 + the address): the same IP
/// always gets the same MAC, which a macvlan network's neighbours cache.
pub fn mac_of(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

impl Host {
    pub async fn connect(endpoint: &Endpoint) -> Result<Host> {
        let err = |reason: String| DeployError::Engine {
            host: endpoint.to_string(),
            what: "connect".into(),
            reason,
        };
        if let Endpoint::Tcp { tls: Some(d), .. } = endpoint {
            check_tls_dir(d).map_err(err)?;
        }
        let docker = match endpoint {
            Endpoint::Unix(p) => {
                Docker::connect_with_socket(&p.to_string_lossy(), 120, bollard::API_DEFAULT_VERSION)
            }
            Endpoint::Tcp { addr, tls: None } => {
                Docker::connect_with_http(addr, 120, bollard::API_DEFAULT_VERSION)
            }
            Endpoint::Tcp { addr, tls: Some(d) } => Docker::connect_with_ssl(
                addr,
                &d.join("key.pem"),
                &d.join("cert.pem"),
                &d.join("ca.pem"),
                120,
                bollard::API_DEFAULT_VERSION,
            ),
        }
        .map_err(|e| err(e.to_string()))?;
        let tls = match endpoint {
            Endpoint::Tcp { tls: Some(d), .. } => Some(d.as_path()),
            _ => None,
        };
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| err("no answer within 5 s (host down or cut off?)".into()))?
            .map_err(|e| err(explain(&e, tls)))?;
        Ok(Host {
            endpoint: endpoint.clone(),
            docker,
        })
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DeployError + '_ {
        let what = what.into();
        move |e| DeployError::Engine {
            host: self.endpoint.to_string(),
            what,
            reason: e.to_string(),
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Creates the network when it is missing, with `ip_range` as the
    /// engine's dynamic range; checks an existing one has the subnet the
    /// spec declares.
    pub async fn ensure_network(&self, net: &Network, ip_range: Option<Ipv4Net>) -> Result<()> {
        let want_subnet = net.subnet.to_string();
        match self.docker.inspect_network(&net.name, None).await {
            Ok(n) => {
                let cfg = n.ipam.and_then(|i| i.config).unwrap_or_default();
                if !cfg
                    .iter()
                    .any(|c| c.subnet.as_deref() == Some(want_subnet.as_str()))
                {
                    let have: Vec<String> = cfg.iter().filter_map(|c| c.subnet.clone()).collect();
                    return Err(DeployError::NetworkMismatch {
                        host: self.endpoint.to_string(),
                        network: net.name.clone(),
                        want: want_subnet,
                        have: have.join(", "),
                    });
                }
                Ok(())
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                let (driver, options) = match &net.driver {
                    Driver::Bridge => ("bridge", HashMap::new()),
                    Driver::Macvlan { parent } => {
                        ("macvlan", HashMap::from([("parent".to_string(), parent.clone())]))
                    }
                };
                let req = NetworkCreateRequest {
                    name: net.name.clone(),
                    driver: Some(driver.into()),
                    ipam: Some(Ipam {
                        driver: Some("default".into()),
                        config: Some(vec![IpamConfig {
                            subnet: Some(want_subnet),
                            ip_range: ip_range.map(|r| r.to_string()),
                            gateway: net.gateway.map(|g| g.to_string()),
                            auxiliary_addresses: None,
                        }]),
                        options: None,
                    }),
                    options: Some(options),
                    labels: Some(HashMap::from([(
                        "org.strata.managed".to_string(),
                        "true".to_string(),
                    )])),
                    ..Default::default()
                };
                self.docker
                    .create_network(req)
                    .await
                    .map_err(self.err(format!("create network {}", net.name)))?;
                Ok(())
            }
            Err(e) => Err(self.err(format!("inspect network {}", net.name))(e)),
        }
    }

    pub async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(e) => Err(self.err(format!("inspect image {image}"))(e)),
        }
    }

    /// `docker load` of a docker-archive.
    pub async fn load(&self, archive: &Path) -> Result<()> {
        crate::engine::load(&self.docker, archive)
            .await
            .map_err(|e| DeployError::Engine {
                host: self.endpoint.to_string(),
                what: "load image".into(),
                reason: e.to_string(),
            })
    }

    pub async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<()> {
        let opts = TagImageOptionsBuilder::default().repo(repo).tag(tag).build();
        self.docker
            .tag_image(image, Some(opts))
            .await
            .map_err(self.err(format!("tag {image}")))
    }

    /// Creates the container on `net`: on its fixed IP, or with `warm` on
    /// an address from the engine's dynamic range (to be moved to the fixed
    /// one by [`Host::move_to_fixed_ip`] once it is healthy).
    pub async fn create(&self, c: &NewContainer, net: &Network, warm: bool) -> Result<String> {
        let endpoint = if warm {
            EndpointSettings {
                aliases: Some(vec![c.hostname.clone()]),
                ..Default::default()
            }
        } else {
            fixed_endpoint(c.ip, &c.hostname)
        };
        let body = ContainerCreateBody {
            image: Some(c.image.clone()),
            hostname: Some(c.hostname.clone()),
            env: Some(c.env.clone()),
            labels: Some(c.labels.clone()),
            cmd: c.command.clone(),
            user: c.user.clone(),
            stop_timeout: Some(c.stop_grace.as_secs().max(1) as i64),
            host_config: Some(HostConfig {
                network_mode: Some(net.name.clone()),
                binds: Some(c.binds.clone()),
                // `getLocalHost()` needs the hostname to resolve.
                extra_hosts: Some(vec![format!("{}:{}", c.hostname, c.ip)]),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                memory: c.memory_mib.map(|m| (m * 1024 * 1024) as i64),
                // An interface attached later (the fixed IP of a warm swap)
                // announces its address with a gratuitous ARP as it comes
                // up: the LAN's switches and neighbours learn where the
                // IP's MAC now is at once, not when their entries expire
                // (measured on the lab's macvlan LAN: 0.2 s instead of
                // ~50 s for an instance that moved to another host).
                sysctls: Some(HashMap::from([(
                    "net.ipv4.conf.default.arp_notify".to_string(),
                    "1".to_string(),
                )])),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(net.name.clone(), endpoint)])),
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&c.name).build();
        Ok(self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(self.err(format!("create container {}", c.name)))?
            .id)
    }

    /// Detaches a running container from `net` and attaches it again on
    /// `ip`: the address moves in a few milliseconds, the processes inside
    /// keep running (they listen on every address).
    pub async fn move_to_fixed_ip(&self, id: &str, net: &str, ip: Ipv4Addr, hostname: &str) -> Result<()> {
        self.detach(id, net).await?;
        self.attach_fixed(id, net, ip, hostname).await
    }

    /// Takes a container off `net` (it keeps running, unreachable).
    pub async fn detach(&self, id: &str, net: &str) -> Result<()> {
        self.docker
            .disconnect_network(
                net,
                NetworkDisconnectRequest {
                    container: id.to_string(),
                    force: Some(true),
                },
            )
            .await
            .map_err(self.err(format!("take {} off {net}", short(id))))
    }

    /// Puts a container on `net` at its fixed `ip`.
    pub async fn attach_fixed(&self, id: &str, net: &str, ip: Ipv4Addr, hostname: &str) -> Result<()> {
        self.docker
            .connect_network(
                net,
                NetworkConnectRequest {
                    container: id.to_string(),
                    endpoint_config: Some(fixed_endpoint(ip, hostname)),
                },
            )
            .await
            .map_err(self.err(format!("put {} on {net} at {ip}", short(id))))
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(self.err(format!("start container {}", short(id))))
    }

    /// SIGTERM, then SIGKILL after `grace`. Stopped or gone already: done.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let opts = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().max(1) as i32)
            .build();
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(self.err(format!("stop container {}", short(id)))(e)),
        }
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(())
            }
            Err(e) => Err(self.err(format!("remove container {}", short(id)))(e)),
        }
    }

    /// The ids of every container (running or not) labelled as one of
    /// `app`'s instances.
    pub async fn containers_of(&self, app: &str) -> Result<Vec<String>> {
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([(
                "label".to_string(),
                vec![format!("org.strata.app={app}")],
            )]))
            .build();
        Ok(self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(self.err(format!("list containers of {app}")))?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }

    /// Removes a named volume; a missing one is fine.
    pub async fn remove_volume(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
        {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(())
            }
            Err(e) => Err(self.err(format!("remove volume {name}"))(e)),
        }
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let opts = KillContainerOptionsBuilder::default().signal(signal).build();
        self.docker
            .kill_container(id, Some(opts))
            .await
            .map_err(self.err(format!("send {signal} to {}", short(id))))
    }

    /// None when the container does not exist.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>> {
        let c = match self.docker.inspect_container(id, None).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(self.err(format!("inspect container {}", short(id)))(e)),
        };
        let state = c.state.unwrap_or_default();
        let config = c.config.unwrap_or_default();
        let host_config = c.host_config.unwrap_or_default();
        let live = super::desired::Live {
            env: config.env.clone().unwrap_or_default(),
            binds: host_config.binds.clone().unwrap_or_default(),
            memory_bytes: host_config.memory.unwrap_or(0).max(0) as u64,
        };
        let finished_at = match state.finished_at.as_deref() {
            Some(f) if !f.starts_with("0001-") => f.to_string(),
            _ => String::new(),
        };
        let ip = c
            .network_settings
            .and_then(|n| n.networks)
            .into_iter()
            .flat_map(|n| n.into_values())
            .filter_map(|e| e.ip_address)
            .find_map(|ip| ip.parse().ok());
        Ok(Some(Container {
            id: c.id.unwrap_or_default(),
            name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
            running: state.running.unwrap_or(false),
            started_at: state.started_at.unwrap_or_default(),
            finished_at,
            pid: state.pid.unwrap_or(0),
            ip,
            image: c.image.unwrap_or_default(),
            labels: config.labels.unwrap_or_default(),
            live,
        }))
    }

    /// Runs `cmd` in the container as `user`, collecting its output.
    pub async fn exec(&self, id: &str, cmd: &[String], user: Option<&str>) -> Result<ExecOutput> {
        self.exec_to(id, cmd, user, None).await
    }

    /// Runs `cmd`; with `stdout_to`, its stdout (binary-safe) goes to that
    /// file and only stderr is collected.
    pub async fn exec_to(
        &self,
        id: &str,
        cmd: &[String],
        user: Option<&str>,
        stdout_to: Option<&Path>,
    ) -> Result<ExecOutput> {
        use tokio::io::AsyncWriteExt;
        let what = format!(
            "exec {} in {}",
            cmd.first().map(String::as_str).unwrap_or(""),
            short(id)
        );
        let opts = CreateExecOptions {
            cmd: Some(cmd.to_vec()),
            user: user.map(str::to_string),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(id, opts)
            .await
            .map_err(self.err(what.clone()))?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DeployError::Io { path, source }
        };
        let mut file = match stdout_to {
            Some(p) => Some(tokio::fs::File::create(p).await.map_err(io(p))?),
            None => None,
        };
        let mut output = String::new();
        if let StartExecResults::Attached { output: mut out, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(self.err(what.clone()))?
        {
            while let Some(chunk) = out.next().await {
                let chunk = chunk.map_err(self.err(what.clone()))?;
                match (&mut file, chunk) {
                    (Some(f), bollard::container::LogOutput::StdOut { message }) => {
                        let p = stdout_to.expect("file implies a path");
                        f.write_all(&message).await.map_err(io(p))?;
                    }
                    (_, chunk) => {
                        // Read-backs describe every changed path: room
                        // for hundreds of thousands of them.
                        if output.len() < 32 << 20 {
                            output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                        }
                    }
                }
            }
        }
        if let (Some(f), Some(p)) = (&mut file, stdout_to) {
            f.sync_all().await.map_err(io(p))?;
        }
        let code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(self.err(what))?
            .exit_code
            .unwrap_or(-1);
        Ok(ExecOutput { code, output })
    }

    /// Extracts a tar file into `dir` of the container. With `cut_at`, the
    /// upload fails after that many bytes (fault injection for tests).
    pub async fn upload(&self, id: &str, dir: &str, tar: &Path, cut_at: Option<u64>) -> Result<()> {
        let f = tokio::fs::File::open(tar)
            .await
            .map_err(|source| DeployError::Io {
                path: tar.to_path_buf(),
                source,
            })?;
        // Small chunks when a cut is injected, so it lands mid-archive.
        let chunk = if cut_at.is_some() { 512 } else { 64 * 1024 };
        let stream = tokio_util::io::ReaderStream::with_capacity(f, chunk);
        let mut sent = 0u64;
        let stream = stream.map(move |chunk| {
            let chunk = chunk?;
            sent += chunk.len() as u64;
            if cut_at.is_some_and(|c| sent > c.max(512)) {
                return Err(std::io::Error::other(
                    "injected fault: upload cut (STRATA_FAULT=hotfix-upload)",
                ));
            }
            Ok(chunk)
        });
        let opts = UploadToContainerOptionsBuilder::default().path(dir).build();
        let what = match cut_at {
            Some(c) => format!(
                "upload into {}:{dir} (injected fault: cut after {c} bytes)",
                short(id)
            ),
            None => format!("upload into {}:{dir}", short(id)),
        };
        self.docker
            .upload_to_container(id, Some(opts), bollard::body_try_stream(stream))
            .await
            .map_err(self.err(what))
    }

    /// The tar Docker makes of `path` in the container (its last component
    /// at the top), written to `dest`; false when the path does not exist.
    pub async fn download(&self, id: &str, path: &str, dest: &Path) -> Result<bool> {
        use tokio::io::AsyncWriteExt;
        let opts = DownloadFromContainerOptionsBuilder::default().path(path).build();
        let mut s = self.docker.download_from_container(id, Some(opts));
        let mut f = tokio::fs::File::create(dest)
            .await
            .map_err(|source| DeployError::Io {
                path: dest.to_path_buf(),
                source,
            })?;
        while let Some(chunk) = s.next().await {
            match chunk {
                Ok(b) => f.write_all(&b).await.map_err(|source| DeployError::Io {
                    path: dest.to_path_buf(),
                    source,
                })?,
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                    return Ok(false);
                }
                Err(e) => return Err(self.err(format!("download {path} from {}", short(id)))(e)),
            }
        }
        f.sync_all().await.map_err(|source| DeployError::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        Ok(true)
    }

    /// The container's log lines (stdout and stderr), following when asked.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> impl Stream<Item = std::result::Result<bytes::Bytes, bollard::errors::Error>> + use<> {
        let tail = tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into());
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
        self.docker
            .logs(id, Some(opts))
            .map(|r| r.map(|l| l.into_bytes()))
    }
}

/// Checks a `tls=DIR` before connecting: bollard reads `ca.pem` at
/// once but the client certificate only during the handshake, and a
/// missing one just goes unsent (the engine then refuses us).
fn check_tls_dir(dir: &Path) -> std::result::Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let missing: Vec<&str> = ["ca.pem", "cert.pem", "key.pem"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no {} in {} (tls=DIR needs ca.pem, cert.pem and key.pem)",
            missing.join(", "),
            dir.display()
        ));
    }
    for f in ["ca.pem", "cert.pem"] {
        let p = dir.join(f);
        let certs = CertificateDer::pem_file_iter(&p)
            .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", p.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", p.display()));
        }
    }
    let key = dir.join("key.pem");
    PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("{}: no private key: {e}", key.display()))?;
    Ok(())
}

/// An engine error with its causes (hyper's own message is only "client
/// error (Connect)"), and what a TLS failure means for the `tls=DIR`.
fn explain(e: &bollard::errors::Error, tls: Option<&Path>) -> String {
    let mut reason = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let m = c.to_string();
        if !reason.contains(&m) {
            reason.push_str(": ");
            reason.push_str(&m);
        }
        cause = c.source();
    }
    let Some(dir) = tls else { return reason };
    if reason.contains("invalid peer certificate") {
        format!(
            "{reason} (the engine's certificate is not signed by {}: a CA from elsewhere?)",
            dir.join("ca.pem").display()
        )
    } else if reason.contains("received fatal alert") {
        format!(
            "{reason} (the engine refused the client certificate {}: it is not signed by the CA the engine trusts)",
            dir.join("cert.pem").display()
        )
    } else {
        reason
    }
}

fn fixed_endpoint(ip: Ipv4Addr, hostname: &str) -> EndpointSettings {
    EndpointSettings {
        ipam_config: Some(EndpointIpamConfig {
            ipv4_address: Some(ip.to_string()),
            ..Default::default()
        }),
        // Engines ≥ 25 take the MAC here; 20.10 derives the same one from
        // the IP itself.
        mac_address: Some(mac_of(ip)),
        aliases: Some(vec![hostname.to_string()]),
        ..Default::default()
    }
}

pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
