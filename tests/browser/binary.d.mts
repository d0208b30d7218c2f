/** The debug `herald` binary's path; built with `cargo build` when missing or stale. */
export function heraldBinary(): string;
