//! PostgreSQL over mTLS: a pool whose connections present the current SVID and check the server's.
//!
//! Each new connection builds its TLS context from the SVID loaded at that moment, so a rotation
//! needs no restart; pooled connections opened with an older SVID are dropped when next taken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::{Cause, Order, PeerCert};
use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use postgres_openssl::MakeTlsConnector;
use svid::SpiffeId;
use tokio_postgres::config::SslMode;

use crate::mtls::Seen;
use crate::svid_source::Unusable;
use crate::{Config, SvidSource};

/// Why a database call failed, in words for the person looking at the demo.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DbError {
    #[error("no usable SVID to present to PostgreSQL: {0}")]
    NoSvid(Unusable),
    #[error("PostgreSQL at {0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("PostgreSQL did not answer within {0} ms")]
    Timeout(u64),
    #[error("TLS with PostgreSQL failed: {0}")]
    Tls(String),
    #[error("PostgreSQL refused the request: {0}")]
    Refused(String),
}

impl DbError {
    /// What failed, for the JSON body.
    pub fn cause(&self) -> Cause {
        match self {
            DbError::NoSvid(u) => u.cause,
            DbError::Unreachable(..) => Cause::DbUnreachable,
            DbError::Timeout(_) => Cause::DbTimeout,
            DbError::Tls(_) => Cause::DbTls,
            DbError::Refused(_) => Cause::DbRefused,
        }
    }
}

pub struct Connection {
    client: tokio_postgres::Client,
    /// The statements prepared on this connection, by their text: each is parsed and planned
    /// once per connection, then only executed (one round trip instead of two).
    statements: HashMap<&'static str, tokio_postgres::Statement>,
    generation: u64,
    /// When the SVID this connection was opened with expires (Unix seconds).
    svid_not_after: i64,
}

pub struct Manager {
    plaintext: bool,
    host: String,
    port: u16,
    dbname: String,
    user: String,
    /// A short-lived user's password from OpenBao; none for `backend`, which logs in by its
    /// certificate alone.
    password: Option<String>,
    expected: SpiffeId,
    connect_timeout: Duration,
    svids: Arc<SvidSource>,
    last_server: Arc<Mutex<Option<PeerCert>>>,
}

#[derive(Clone)]
pub struct Database {
    pool: Pool<Manager>,
    timeout: Duration,
    last_server: Arc<Mutex<Option<PeerCert>>>,
}

impl Manager {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn tls(&self, seen: Arc<Mutex<Seen>>) -> Result<MakeTlsConnector, DbError> {
        let svid = self.svids.current().map_err(DbError::NoSvid)?;
        let b = crate::mtls::connector(&svid, self.expected.clone(), seen)
            .map_err(|e| DbError::Tls(e.to_string()))?;
        let mut connector = MakeTlsConnector::new(b.build());
        // The server is identified by its SPIFFE ID, checked above, not by a hostname.
        connector.set_callback(|conf, _host| {
            conf.set_verify_hostname(false);
            Ok(())
        });
        Ok(connector)
    }

    fn explain(&self, e: &tokio_postgres::Error, seen: &Seen) -> DbError {
        if let Some(db) = e.as_db_error() {
            return DbError::Refused(db.message().to_owned());
        }
        if let Some(refused) = seen.refusal("PostgreSQL", &self.expected) {
            return DbError::Tls(refused);
        }
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        let mut tls = false;
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            if s.downcast_ref::<openssl::ssl::Error>().is_some()
                || s.downcast_ref::<openssl::error::ErrorStack>().is_some()
            {
                tls = true;
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
                )
            {
                return DbError::Unreachable(self.address(), io.to_string());
            }
            source = s.source();
        }
        if tls || detail.contains("TLS") || detail.contains("ssl") {
            DbError::Tls(format!(
                "the handshake failed ({detail}); is our SVID trusted by PostgreSQL?"
            ))
        } else {
            DbError::Unreachable(self.address(), detail)
        }
    }
}

impl Manager {
    fn pg_config(&self, ssl: SslMode) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .user(&self.user)
            .ssl_mode(ssl)
            .connect_timeout(self.connect_timeout)
            .application_name("backend");
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// The benchmark's plaintext baseline: no TLS, no SVID.
    async fn create_plaintext(&self) -> Result<Connection, DbError> {
        let (client, connection) = self
            .pg_config(SslMode::Disable)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| self.explain(&e, &Seen::default()))?;
        tokio::spawn(connection);
        Ok(Connection {
            client,
            statements: HashMap::new(),
            generation: self.svids.generation(),
            svid_not_after: i64::MAX,
        })
    }
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = DbError;

    async fn create(&self) -> Result<Connection, DbError> {
        if self.plaintext {
            return self.create_plaintext().await;
        }
        let generation = self.svids.generation();
        let svid_not_after = self.svids.current().map_err(DbError::NoSvid)?.not_after;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let tls = self.tls(seen.clone())?;
        match self.pg_config(SslMode::Require).connect(tls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "PostgreSQL connection closed");
                    }
                });
                let server = seen.lock().unwrap().leaf.clone();
                if let Some(server) = &server {
                    tracing::debug!(server_serial = %server.serial, "new PostgreSQL connection");
                }
                *self.last_server.lock().unwrap() = server;
                Ok(Connection {
                    client,
                    statements: HashMap::new(),
                    generation,
                    svid_not_after,
                })
            }
            Err(e) => Err(self.explain(&e, &seen.lock().unwrap())),
        }
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<DbError> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        if conn.generation != self.svids.generation() {
            return Err(RecycleError::message("opened with an older SVID"));
        }
        // An identity that has expired is not used any more, not even on an open connection.
        if conn.svid_not_after <= contract::time::unix_now() {
            return Err(RecycleError::message(
                "opened with an SVID that has expired",
            ));
        }
        Ok(())
    }
}

/// Who a pool logs in as: `backend` by its certificate, or a short-lived user with the password
/// OpenBao gave (and the backend's certificate all the same).
pub struct Login {
    pub user: String,
    pub password: Option<String>,
    pub pool_size: usize,
}

impl Database {
    pub fn new(config: &Config, svids: Arc<SvidSource>) -> anyhow::Result<Database> {
        let login = Login {
            user: config.db_user.clone(),
            password: None,
            pool_size: config.db_pool_size,
        };
        Database::logged_in_as(config, svids, login)
    }

    /// A pool of connections to the configured PostgreSQL as `login`.
    pub fn logged_in_as(
        config: &Config,
        svids: Arc<SvidSource>,
        login: Login,
    ) -> anyhow::Result<Database> {
        let last_server = Arc::new(Mutex::new(None));
        let timeout = config.db_timeout();
        let manager = Manager {
            plaintext: config.db_insecure_plaintext,
            host: config.db_host.clone(),
            port: config.db_port,
            dbname: config.db_name.clone(),
            user: login.user,
            password: login.password,
            expected: config.db_spiffe_id.clone(),
            connect_timeout: timeout,
            svids,
            last_server: last_server.clone(),
        };
        let pool = Pool::builder(manager)
            .max_size(login.pool_size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()?;
        Ok(Database {
            pool,
            timeout,
            last_server,
        })
    }

    /// (in use, idle, largest size) of the connection pool.
    pub fn pool_state(&self) -> (usize, usize, usize) {
        let s = self.pool.status();
        (s.size.saturating_sub(s.available), s.available, s.max_size)
    }

    /// The certificate PostgreSQL presented on the latest new connection.
    pub fn last_server(&self) -> Option<PeerCert> {
        self.last_server.lock().unwrap().clone()
    }

    pub async fn orders(&self) -> Result<Vec<Order>, DbError> {
        let rows = self
            .query("SELECT id, description, status FROM orders ORDER BY id")
            .await?;
        Ok(rows
            .iter()
            .map(|r| Order {
                id: r.get::<_, i32>(0).into(),
                description: r.get(1),
                status: r.get(2),
            })
            .collect())
    }

    /// The `reports` view (orders by status), which OpenBao's short-lived users may read.
    pub async fn reports(&self) -> Result<Vec<contract::openbao::ReportRow>, DbError> {
        let rows = self
            .query("SELECT status, orders FROM reports ORDER BY status")
            .await?;
        Ok(rows
            .iter()
            .map(|r| contract::openbao::ReportRow {
                status: r.get(0),
                orders: r.get::<_, i32>(1).into(),
            })
            .collect())
    }

    /// True when PostgreSQL answers a trivial query.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.query("SELECT 1").await.map(|_| ())
    }

    async fn query(&self, sql: &'static str) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let limit = self.timeout.as_millis() as u64;
        let work = async {
            // A connection the server closed (a restart) is found out here and replaced once.
            for attempt in 0..2 {
                let mut conn = self.pool.get().await.map_err(|e| match e {
                    managed::PoolError::Backend(e) => e,
                    managed::PoolError::Timeout(_) => DbError::Timeout(limit),
                    other => DbError::Unreachable("pool".into(), other.to_string()),
                })?;
                let rows = async {
                    let statement = match conn.statements.get(sql) {
                        Some(s) => s.clone(),
                        None => {
                            let s = conn.client.prepare(sql).await?;
                            conn.statements.insert(sql, s.clone());
                            s
                        }
                    };
                    conn.client.query(&statement, &[]).await
                };
                match rows.await {
                    Ok(rows) => return Ok(rows),
                    Err(e) if e.is_closed() && attempt == 0 => {
                        let _ = managed::Object::take(conn);
                    }
                    Err(e) => {
                        return Err(match e.as_db_error() {
                            Some(db) => DbError::Refused(db.message().to_owned()),
                            None => DbError::Unreachable("PostgreSQL".into(), e.to_string()),
                        });
                    }
                }
            }
            Err(DbError::Unreachable(
                "PostgreSQL".into(),
                "connection lost twice".into(),
            ))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(DbError::Timeout(limit)))
    }
}
