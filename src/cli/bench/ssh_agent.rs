//! Runs in the host: the ssh-agent room, a private OpenSSH agent that `keyward bench` compares
//! against, spoken to over its socket.
//!
//! The agent runs in a private temporary directory with a freshly generated Ed25519 key; it is
//! killed and the directory removed when the value is dropped, also on a panic. The criterion
//! benchmark (`benches/signing.rs`) includes this file by path, so it uses nothing from the rest
//! of `keyward bench`.

use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The ssh-agent message numbers used here (draft-miller-ssh-agent).
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;
/// The largest agent answer accepted.
const MAX_AGENT_MESSAGE: usize = 256 * 1024;

/// A private OpenSSH agent holding one freshly generated Ed25519 key, spoken to over its socket.
/// Dropping it kills the agent and removes its directory (also when unwinding from a panic).
pub(crate) struct SshAgent {
    stream: UnixStream,
    public: [u8; 32],
    /// A whole SIGN_REQUEST; the digest sits at `data_at`.
    request: Vec<u8>,
    data_at: usize,
    answer: Vec<u8>,
    /// Declared last, so it drops last: the connection closes before the agent is killed.
    _guard: AgentGuard,
}

/// Kills the agent and removes the private directory.
struct AgentGuard {
    dir: PathBuf,
    agent: Option<Child>,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SshAgent {
    /// Starts the agent and adds a new key; fails (with the reason) if OpenSSH is not installed.
    pub(crate) fn start() -> Result<Self> {
        let mut tools = Vec::new();
        for tool in ["ssh-agent", "ssh-keygen", "ssh-add"] {
            tools.push(
                find_program(tool)
                    .with_context(|| format!("{tool} is not installed (not found in PATH)"))?,
            );
        }
        let [agent_program, keygen, add] = <[PathBuf; 3]>::try_from(tools)
            .map_err(|_| anyhow!("three programs were looked up"))?;
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(|error| anyhow!("no entropy: {error}"))?;
        let dir = std::env::temp_dir().join(format!(
            "keyward-bench-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(tag)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut guard = AgentGuard {
            dir: dir.clone(),
            agent: None,
        };
        let key = dir.join("id_ed25519");
        let generated = Command::new(&keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "keyward-bench", "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running ssh-keygen")?;
        if !generated.success() {
            bail!("ssh-keygen failed: {generated}");
        }
        let socket = dir.join("agent.sock");
        let agent = guard.agent.insert(
            Command::new(&agent_program)
                .arg("-D")
                .arg("-a")
                .arg(&socket)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting ssh-agent")?,
        );
        let stream = connect_when_ready(&socket, agent)?;
        let added = Command::new(&add)
            .arg("-q")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running ssh-add")?;
        if !added.success() {
            bail!("ssh-add failed: {added}");
        }
        let mut agent = Self {
            stream,
            public: [0; 32],
            request: Vec::new(),
            data_at: 0,
            answer: Vec::new(),
            _guard: guard,
        };
        let blob = agent.ed25519_identity()?;
        let mut body = vec![SSH_AGENTC_SIGN_REQUEST];
        put_string(&mut body, &blob)?;
        put_string(&mut body, &[0u8; 32])?;
        body.extend_from_slice(&0u32.to_be_bytes()); // flags
        agent.request = framed(&body)?;
        agent.data_at = agent.request.len() - 4 - 32;
        // What is timed must be real work: check one signature.
        let digest = [3u8; 32];
        let signature = agent.sign(&digest)?;
        ed25519_dalek::VerifyingKey::from_bytes(&agent.public)
            .context("the agent's public key")?
            .verify_strict(&digest, &ed25519_dalek::Signature::from_bytes(&signature))
            .context("a signature from ssh-agent did not verify")?;
        Ok(agent)
    }

    /// Asks for the agent's identities; keeps the first Ed25519 key's public key and returns
    /// its blob.
    fn ed25519_identity(&mut self) -> Result<Vec<u8>> {
        let request = framed(&[SSH_AGENTC_REQUEST_IDENTITIES])?;
        self.transact(&request)?;
        let mut answer = Cursor(&self.answer);
        if answer.byte()? != SSH_AGENT_IDENTITIES_ANSWER {
            bail!("ssh-agent did not list its identities");
        }
        for _ in 0..answer.u32()? {
            let blob = answer.string()?;
            let _comment = answer.string()?;
            let mut key = Cursor(blob);
            if key.string()? == b"ssh-ed25519" {
                self.public = key
                    .string()?
                    .try_into()
                    .context("an Ed25519 public key that is not 32 bytes")?;
                return Ok(blob.to_vec());
            }
        }
        bail!("ssh-agent holds no Ed25519 key")
    }

    /// Signs a 32-byte digest; returns the raw 64-byte Ed25519 signature.
    pub(crate) fn sign(&mut self, digest: &[u8; 32]) -> Result<[u8; 64]> {
        self.request[self.data_at..self.data_at + 32].copy_from_slice(digest);
        let request = std::mem::take(&mut self.request);
        let sent = self.transact(&request);
        self.request = request;
        sent?;
        let mut answer = Cursor(&self.answer);
        if answer.byte()? != SSH_AGENT_SIGN_RESPONSE {
            bail!("ssh-agent refused to sign");
        }
        let mut signature = Cursor(answer.string()?);
        if signature.string()? != b"ssh-ed25519" {
            bail!("ssh-agent answered with a signature that is not Ed25519");
        }
        signature
            .string()?
            .try_into()
            .context("an Ed25519 signature that is not 64 bytes")
    }

    /// Sends one framed message and reads the answer's body into `self.answer`.
    fn transact(&mut self, request: &[u8]) -> Result<()> {
        self.stream
            .write_all(request)
            .context("writing to ssh-agent")?;
        let mut length = [0u8; 4];
        self.stream
            .read_exact(&mut length)
            .context("reading from ssh-agent")?;
        let length = usize::try_from(u32::from_be_bytes(length))?;
        if length == 0 || length > MAX_AGENT_MESSAGE {
            bail!("ssh-agent sent a message of {length} bytes");
        }
        self.answer.resize(length, 0);
        self.stream
            .read_exact(&mut self.answer)
            .context("reading from ssh-agent")
    }
}

/// Connects to the agent's socket once it is listening (within five seconds).
fn connect_when_ready(socket: &Path, agent: &mut Child) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(error) => {
                if let Some(status) = agent.try_wait()? {
                    bail!("ssh-agent exited at start: {status}");
                }
                if Instant::now() >= deadline {
                    return Err(error).context("ssh-agent's socket did not appear");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// An agent-protocol message: a big-endian u32 length, then the body.
fn framed(body: &[u8]) -> Result<Vec<u8>> {
    let mut message = u32::try_from(body.len())?.to_be_bytes().to_vec();
    message.extend_from_slice(body);
    Ok(message)
}

/// An SSH `string`: a big-endian u32 length, then the bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    out.extend_from_slice(&u32::try_from(bytes.len())?.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads SSH wire types from a message.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8]> {
        if self.0.len() < count {
            bail!("a truncated ssh-agent message");
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8]> {
        let length = usize::try_from(self.u32()?)?;
        self.take(length)
    }
}
