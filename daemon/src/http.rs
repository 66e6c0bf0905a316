//! The HTTP API: `GET /health` (no auth) and the minimal authenticated data API
//! under `/v1` that gives upgrades real data to carry.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use waiaas_shared::health::HealthResponse;
use waiaas_shared::{kv, version};

use crate::db::Db;
use crate::{migrate, token};

/// What every handler shares.
#[derive(Clone)]
pub struct State {
    pub db: Db,
    pub started: Instant,
    pub token: Arc<str>,
}

/// All routes, with errors rendered as JSON.
pub fn routes(state: State) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    api(state).recover(render_rejection)
}

/// The public API, rejections not yet rendered.
fn api(state: State) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let health = warp::path!("health")
        .and(warp::get())
        .and(with(state.clone()))
        .and_then(health);
    let wallets = warp::path!("v1" / "wallets").and(authorized(state.clone()));
    let list = wallets.clone().and(warp::get()).and_then(list_wallets);
    let create = wallets
        .and(warp::post())
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::json())
        .and_then(create_wallet);
    health.or(list).or(create)
}

/// [`routes`] and, for the launcher alone on the private listener of a daemon
/// on probation, `POST /probe/write`: the write path exercised in a
/// transaction that is rolled back, so a release whose writes fail never
/// gets the public port (SPEC §13).
pub fn probe_routes(
    state: State,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let write = warp::path!("probe" / "write")
        .and(warp::post())
        .and(with(state.clone()))
        .and_then(write_probe);
    write.or(api(state)).recover(render_rejection)
}

fn with(state: State) -> impl Filter<Extract = (State,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

fn authorized(state: State) -> impl Filter<Extract = (State,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(with(state))
        .and_then(|header: Option<String>, state: State| async move {
            let presented = header
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or_default();
            if token::matches(presented, &state.token) {
                Ok(state)
            } else {
                Err(warp::reject::custom(ApiError::Unauthorized))
            }
        })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn health(state: State) -> Result<impl Reply, Rejection> {
    if crate::failpoint::fault("health-503") {
        return Err(warp::reject::custom(ApiError::Database));
    }
    let read = state
        .db
        .read(|conn| -> rusqlite::Result<(u32, Option<String>)> {
            Ok((migrate::database_version(conn)?, kv::get(conn, kv::LATEST)?))
        })
        .await;
    let (schema_version, latest_version) = read.map_err(|e| {
        tracing::error!("health: cannot read the database: {e}");
        warp::reject::custom(ApiError::Database)
    })?;
    let body = HealthResponse {
        status: "ok".into(),
        version: version::VERSION.into(),
        update_available: latest_version
            .as_deref()
            .is_some_and(|latest| version::is_newer(latest, version::VERSION)),
        latest_version,
        schema_version,
        uptime: state.started.elapsed().as_secs(),
        timestamp: unix_now(),
    };
    Ok(warp::reply::json(&body))
}

/// A wallet as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wallet {
    pub id: String,
    pub name: String,
    pub chain: String,
    pub network: String,
    pub public_key: String,
    pub status: String,
    pub created_at: i64,
}

/// `POST /v1/wallets` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewWallet {
    pub name: String,
    pub chain: String,
    pub network: String,
    pub public_key: Option<String>,
}

const CHAINS: &[&str] = &["solana", "ethereum"];

async fn list_wallets(state: State) -> Result<impl Reply, Rejection> {
    let wallets = state
        .db
        .read(|conn| -> rusqlite::Result<Vec<Wallet>> {
            let mut stmt = conn.prepare(
                "SELECT id, name, chain, network, public_key, status, created_at
                 FROM wallets ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(Wallet {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    chain: row.get(2)?,
                    network: row.get(3)?,
                    public_key: row.get(4)?,
                    status: row.get(5)?,
                    created_at: row.get(6)?,
                })
            })?;
            rows.collect()
        })
        .await
        .map_err(database_error)?;
    Ok(warp::reply::json(
        &serde_json::json!({ "wallets": wallets }),
    ))
}

async fn create_wallet(state: State, new: NewWallet) -> Result<impl Reply, Rejection> {
    let invalid = |msg: String| warp::reject::custom(ApiError::Invalid(msg));
    let name = new.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("name must be 1 to 100 characters".into()));
    }
    if !CHAINS.contains(&new.chain.as_str()) {
        return Err(invalid(format!(
            "chain must be one of {}",
            CHAINS.join(", ")
        )));
    }
    if new.network.trim().is_empty() {
        return Err(invalid("network must not be empty".into()));
    }
    let id = token::random_hex(16).map_err(|_| warp::reject::custom(ApiError::Database))?;
    let public_key = match new.public_key {
        Some(key) => key,
        None => token::random_hex(32).map_err(|_| warp::reject::custom(ApiError::Database))?,
    };
    let wallet = Wallet {
        id,
        name,
        chain: new.chain,
        network: new.network,
        public_key,
        status: "ACTIVE".into(),
        created_at: unix_now() as i64,
    };
    let row = (
        wallet.id.clone(),
        wallet.name.clone(),
        wallet.chain.clone(),
        wallet.network.clone(),
        wallet.public_key.clone(),
        wallet.created_at,
    );
    state
        .db
        .write(move |conn| insert_wallet(conn, &row))
        .await
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                warp::reject::custom(ApiError::Conflict(
                    "a wallet with this public key exists".into(),
                ))
            }
            e => database_error(e),
        })?;
    state.db.wrote();
    Ok(warp::reply::with_status(
        warp::reply::json(&wallet),
        StatusCode::CREATED,
    ))
}

/// A new wallet's columns: id, name, chain, network, public key, time.
type WalletRow = (String, String, String, String, String, i64);

/// Inserts a wallet and its audit entry: every write leaves a trace in the
/// audit log, in the same transaction (the write's savepoint).
fn insert_wallet(tx: &rusqlite::Connection, row: &WalletRow) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO wallets (id, name, chain, network, public_key, status, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'ACTIVE', ?6, ?6)",
        rusqlite::params![row.0, row.1, row.2, row.3, row.4, row.5],
    )?;
    let details = serde_json::json!({ "name": row.1, "chain": row.2 }).to_string();
    tx.execute(
        "INSERT INTO audit_log (timestamp, event_type, actor, wallet_id, details)
         VALUES (?1, 'WALLET_CREATED', 'master', ?2, ?3)",
        rusqlite::params![row.5, row.0, details],
    )?;
    Ok(())
}

/// `POST /probe/write`: a wallet written through the writer's batch and
/// rolled back; 204 when the database took it.
async fn write_probe(state: State) -> Result<impl Reply, Rejection> {
    let id = token::random_hex(16).map_err(|_| warp::reject::custom(ApiError::Database))?;
    let row: WalletRow = (
        format!("probe-{id}"),
        "write probe".into(),
        CHAINS[0].into(),
        "probe".into(),
        format!("probe-{id}"),
        unix_now() as i64,
    );
    state
        .db
        .write_rolled_back(move |conn| insert_wallet(conn, &row))
        .await
        .map_err(database_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn database_error(e: rusqlite::Error) -> Rejection {
    tracing::error!("database error: {e}");
    warp::reject::custom(ApiError::Database)
}

#[derive(Debug)]
enum ApiError {
    Unauthorized,
    Invalid(String),
    Conflict(String),
    Database,
}

impl warp::reject::Reject for ApiError {}

async fn render_rejection(rejection: Rejection) -> Result<impl Reply, Infallible> {
    let (status, code, message) = if let Some(e) = rejection.find::<ApiError>() {
        match e {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <token from data/master.token>".to_string(),
            ),
            ApiError::Invalid(msg) => (StatusCode::BAD_REQUEST, "invalid", msg.clone()),
            ApiError::Conflict(msg) => (StatusCode::CONFLICT, "conflict", msg.clone()),
            ApiError::Database => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database",
                "the database could not be read or written; see the daemon log".to_string(),
            ),
        }
    } else if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route".to_string(),
        )
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        (StatusCode::BAD_REQUEST, "invalid", e.to_string())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body is over 64 KiB".to_string(),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            "method not allowed".to_string(),
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{rejection:?}"),
        )
    };
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    Ok(warp::reply::with_status(warp::reply::json(&body), status))
}
