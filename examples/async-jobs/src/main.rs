//! Runs the async-jobs example until Ctrl-C: the page at `/`, the job routes and Herald's
//! routes on one port.
//!
//! `PORT` picks the port on 127.0.0.1 (default 3001); `JWT_SECRET` the HS256 secret for
//! user tokens (default: a demo secret, fine on loopback only).

use std::error::Error;
use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let port = match std::env::var("PORT") {
        Ok(p) => p.parse::<u16>().map_err(|e| format!("PORT must be a port number, not `{p}`: {e}"))?,
        Err(_) => 3001,
    };
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| "demo-secret-change-me-in-production".to_owned());
    let mut config = herald::Config { listen: SocketAddr::from(([127, 0, 0, 1], port)), ..herald::Config::default() };
    config.auth.jwt_secret = Some(secret);
    let herald = herald::Herald::new(config)?;
    let app = herald_example_async_jobs::app(herald.clone());
    let server = herald::Server::bind_with_router(herald, app).await?;
    println!("open http://{}/ in a browser", server.local_addr()?);
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
