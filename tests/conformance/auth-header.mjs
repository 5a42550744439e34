// Preloaded into the conformance suite (`node --import ./auth-header.mjs`): the suite has no
// option to send custom headers, and the gateway requires `Authorization: Bearer <agent key>`.
// When CONFORMANCE_AUTHORIZATION is set, every HTTP request the process makes (global fetch, used
// by the MCP SDK client and the raw-fetch scenarios, and undici's request, used by the DNS
// rebinding scenario) carries it as its Authorization header, unless the request sets one.
import { Agent, setGlobalDispatcher } from "undici";

const authorization = process.env.CONFORMANCE_AUTHORIZATION;

function withAuthorization(headers) {
  if (headers == null) return { authorization };
  if (Array.isArray(headers)) {
    // Flat [name, value, name, value, ...] or [[name, value], ...].
    const flat = Array.isArray(headers[0]) ? headers.flat() : [...headers];
    for (let i = 0; i < flat.length; i += 2) {
      if (String(flat[i]).toLowerCase() === "authorization") return headers;
    }
    return [...flat, "authorization", authorization];
  }
  if (typeof headers[Symbol.iterator] === "function") {
    return withAuthorization([...headers]);
  }
  for (const name of Object.keys(headers)) {
    if (name.toLowerCase() === "authorization") return headers;
  }
  return { ...headers, authorization };
}

if (authorization) {
  setGlobalDispatcher(
    new Agent().compose(
      (dispatch) => (opts, handler) =>
        dispatch({ ...opts, headers: withAuthorization(opts.headers) }, handler),
    ),
  );
}
