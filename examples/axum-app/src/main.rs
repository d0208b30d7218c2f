//! Runs the example app: Herald's routes and the app's own on one port, until Ctrl-C.
//!
//! `PORT` picks the port on 127.0.0.1 (default 3000).

use std::error::Error;
use std::net::SocketAddr;

use herald_example_axum_app::app;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let port = match std::env::var("PORT") {
        Ok(p) => p
            .parse::<u16>()
            .map_err(|e| format!("PORT must be a port number, not `{p}`: {e}"))?,
        Err(_) => 3000,
    };
    let config = herald::Config {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        ..herald::Config::default()
    };
    let herald = herald::Herald::new(config)?;
    let server = herald::Server::bind_with_router(herald.clone(), app(herald)).await?;
    println!("listening on http://{}", server.local_addr()?);
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
