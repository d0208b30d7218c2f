// The one error type of the client: an error answer of Herald's API, a refusal over a
// socket, or a network failure, with the status that says whether a retry can help.

/** An error answer of Herald's API (`{"error":{"code","message"}}`) or of the network. */
export class HeraldError extends Error {
  constructor(
    message: string,
    /** The HTTP status, 0 for a network failure. */
    readonly status: number,
    /** Herald's snake_case error code, like `invalid_channel`. */
    readonly code: string,
    /** From `Retry-After`, in ms. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'HeraldError';
  }

  /** Retrying cannot help: a bad request, a forbidden channel, an unknown endpoint. */
  get fatal(): boolean {
    return this.status >= 400 && this.status < 500 && ![401, 408, 425, 429].includes(this.status);
  }
}
