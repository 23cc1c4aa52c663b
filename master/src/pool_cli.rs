//! `warren pool …`: the operator's view of a running server's worker pool
//! and its rolling restart, through the admin API (an administrator's API
//! token) on warren's own listener.

use crate::cli::{PoolArgs, PoolCommand};
use anyhow::{bail, Context};
use axum::body::Body;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

/// How long a plain question may take, connection included.
const ANSWER: Duration = Duration::from_secs(30);

pub async fn run(command: PoolCommand) -> anyhow::Result<()> {
    match command {
        PoolCommand::Status { api } => {
            let api = Api::new(&api)?;
            let pool = api.call(Method::GET, "/api/v1/admin/pool", ANSWER).await?;
            for slot in slots(&pool)? {
                println!("{}", describe(slot));
            }
            Ok(())
        }
        PoolCommand::Restart {
            api,
            rolling,
            slot,
            grace,
        } => {
            let api = Api::new(&api)?;
            let targets: Vec<u64> = match (rolling, slot) {
                (true, None) => {
                    let pool = api.call(Method::GET, "/api/v1/admin/pool", ANSWER).await?;
                    slots(&pool)?
                        .iter()
                        .filter_map(|slot| slot["slot"].as_u64())
                        .collect()
                }
                (false, Some(slot)) => vec![u64::from(slot)],
                _ => bail!("say which: --rolling (every slot in turn) or --slot N"),
            };
            let grace = grace.as_secs().clamp(1, 3600);
            for slot in targets {
                let started = Instant::now();
                let path = format!("/api/v1/admin/pool/{slot}/restart?grace_seconds={grace}");
                // The grace, a worker's stop and start, and a margin.
                let patience = Duration::from_secs(grace + 60);
                let after = api
                    .call(Method::POST, &path, patience)
                    .await
                    .with_context(|| {
                        format!("slot {slot} was not restarted; the rest were not tried")
                    })?;
                println!(
                    "restarted in {:.1}s: {}",
                    started.elapsed().as_secs_f64(),
                    describe(&after)
                );
            }
            Ok(())
        }
    }
}

fn slots(pool: &serde_json::Value) -> anyhow::Result<&Vec<serde_json::Value>> {
    pool["slots"]
        .as_array()
        .context("the server's answer has no slots: is this a warren with the pool API?")
}

fn describe(slot: &serde_json::Value) -> String {
    let number = |key: &str| {
        slot[key]
            .as_u64()
            .map_or("-".to_string(), |n| n.to_string())
    };
    format!(
        "slot {} {} pid {} up {}s restarts {} users {} in-flight {} streams {} rss {} KiB",
        number("slot"),
        slot["state"].as_str().unwrap_or("?"),
        number("pid"),
        number("uptime_seconds"),
        number("restarts"),
        number("users_seen"),
        number("in_flight"),
        number("open_streams"),
        slot["rss_bytes"]
            .as_u64()
            .map_or("-".to_string(), |bytes| (bytes / 1024).to_string()),
    )
}

struct Api {
    base: String,
    token: String,
    client: Client<HttpConnector, Body>,
}

impl Api {
    fn new(args: &PoolArgs) -> anyhow::Result<Api> {
        let base = args.url.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!(
                "--url {base}: give warren's own http:// listener (such as http://127.0.0.1:8080), \
                 not the TLS front"
            );
        }
        let text = std::fs::read_to_string(&args.token_file)
            .with_context(|| format!("cannot read --token-file {}", args.token_file.display()))?;
        let token = text.lines().next().unwrap_or_default().trim().to_string();
        if token.is_empty() {
            bail!("--token-file {} is empty", args.token_file.display());
        }
        Ok(Api {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        })
    }

    /// `method path` with the token; the JSON answer, or the server's error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        patience: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .body(Body::empty())
            .context("cannot build the request")?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .with_context(|| format!("cannot reach warren at {}", self.base))?;
            let status = response.status();
            let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
                .await
                .context("cannot read warren's answer")?;
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(patience, exchange)
            .await
            .map_err(|_| {
                anyhow::anyhow!("warren at {} did not answer within {patience:?}", self.base)
            })??;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if status != StatusCode::OK {
            let message = json["error"]["message"].as_str().map_or_else(
                || String::from_utf8_lossy(&body).into_owned(),
                str::to_string,
            );
            bail!("{status}: {message}");
        }
        Ok(json)
    }
}
