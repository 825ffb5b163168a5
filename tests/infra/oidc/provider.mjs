// The OpenID Provider the tests start: panva's oidc-provider on loopback, configured from the
// JSON file named on the command line (tests/infra/oidc.py writes it).
//
//   node provider.mjs CONFIG.json
//
// Besides the provider's own endpoints it serves:
//   /interaction/:uid            the login page (login + password, checked against the users)
//                                and the consent page
//   POST /__test/config          replace the whole configuration (clients, users, keys...)
//                                without a restart: a new provider object takes over the
//                                requests; sessions, grants and codes live in the memory
//                                adapter's storage, which every provider object of this process
//                                shares, so they survive (used for key rotation and clients)
//   GET  /__test/health          200 once the provider answers
// The /__test/ calls need the header `x-test-admin: <admin_token from the configuration>`.
//
// Every page is plain HTML without outside resources (the tests have no network) and with
// stable ids for the browser helpers in tests/infra/oidc_pages.py.

import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';
// The package's own in-memory adapter (pinned version; the package has no `exports` map).
// Made through a factory, every provider object of this process shares its one module-level
// storage, so a replaced configuration keeps sessions, grants, codes and interactions.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const ADMIN_PREFIX = '/__test/';
const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(\/(login|confirm|abort))?$/;
const MAX_BODY = 1024 * 1024;

function log(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), event, ...fields })}\n`);
}

function escapeHtml(value) {
  return String(value)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>${escapeHtml(title)}</h1>
${body}
</main></body></html>`;
}

// A redirect URI pattern: `*` matches within one part (no `/`, `?`, `#`), `**` matches anything.
function patternRegExp(pattern) {
  const parts = pattern.split(/(\*\*|\*)/u).map((part) => {
    if (part === '**') return '.*';
    if (part === '*') return '[^/?#]*';
    return part.replace(/[.+?^${}()|[\]\\]/gu, '\\$&');
  });
  return new RegExp(`^${parts.join('')}$`, 'u');
}

function buildProvider(config) {
  const users = new Map(config.users.map((user) => [user.sub, user]));
  const byLogin = new Map(config.users.map((user) => [user.login, user]));
  const patterns = new Map();
  const clients = config.clients.map((client) => {
    const {
      redirect_uri_patterns: redirect = [],
      post_logout_redirect_uri_patterns: postLogout = [],
      ...metadata
    } = client;
    patterns.set(client.client_id, {
      redirect: redirect.map(patternRegExp),
      postLogout: postLogout.map(patternRegExp),
    });
    return metadata;
  });
  const resource = config.resource;
  // JWT access tokens: RS256 while the key set has an RS256 key, else the first key's.
  const accessTokenAlg = (config.keys.find((key) => key.alg === 'RS256') ?? config.keys[0]).alg;

  const provider = new Provider(config.issuer, {
    adapter: (model) => new MemoryAdapter(model),
    clients,
    jwks: { keys: config.keys },
    // Names of their own: every test server on 127.0.0.1 shares one cookie jar per browser.
    cookies: {
      keys: config.cookie_keys,
      names: { session: 'op_session', interaction: 'op_interaction', resume: 'op_interaction_resume' },
    },
    // HS256 (signed with the client's secret) only so that tests can show it is refused.
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256', 'HS256'] },
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username', 'upn'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', ...resource.scopes],
    // The claims of the asked scopes go into the ID token too (sessiond reads the ID token).
    conformIdTokenClaims: false,
    async findAccount(ctx, sub) {
      const user = users.get(sub);
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, ...user.claims };
        },
      };
    },
    interactions: {
      url(ctx, interaction) {
        return `/interaction/${interaction.uid}`;
      },
    },
    pkce: {
      required: (ctx, client) => client.clientAuthMethod === 'none' || client.metadata().require_pkce === true,
    },
    ttl: config.ttl,
    features: {
      devInteractions: { enabled: false },
      backchannelLogout: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      deviceFlow: {
        enabled: true,
        userCodeInputSource,
        userCodeConfirmSource,
        successSource,
      },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource,
        postLogoutSuccessSource,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => oneOf ?? resource.indicator,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator) => {
          if (indicator !== resource.indicator) throw new errors.InvalidTarget();
          return {
            scope: resource.scopes.join(' '),
            audience: resource.audience,
            accessTokenFormat: 'jwt',
            accessTokenTTL: config.ttl.AccessToken,
            jwt: { sign: { alg: accessTokenAlg } },
          };
        },
      },
    },
    extraClientMetadata: { properties: ['require_pkce'] },
    renderError,
    // The tests' receivers (back-channel logout URIs) are on loopback, which oidc-provider's
    // guard against server-side request forgery refuses: this provider only ever runs there.
    fetch: (url, options) => {
      const { dispatcher, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
  });
  provider.proxy = false;

  const allowed = (kind) => function check(original) {
    return function wrapped(value) {
      if (original.call(this, value)) return true;
      const own = patterns.get(this.clientId);
      return Boolean(own?.[kind].some((re) => re.test(value)));
    };
  };
  const proto = provider.Client.prototype;
  proto.redirectUriAllowed = allowed('redirect')(proto.redirectUriAllowed);
  proto.postLogoutRedirectUriAllowed = allowed('postLogout')(proto.postLogoutRedirectUriAllowed);
  // ID tokens carry `sid` for every client registered with backchannel_logout_session_required,
  // whether or not it has a backchannel_logout_uri yet (oidc-provider asks for both), as most
  // providers put `sid` in every ID token.
  proto.includeSid = function includeSid() {
    return Boolean(this.backchannelLogoutSessionRequired);
  };

  for (const name of [
    'backchannel.success', 'backchannel.error', 'end_session.success', 'grant.success',
    'grant.error', 'authorization.error', 'server_error', 'interaction.started',
  ]) {
    provider.on(name, (...args) => {
      const err = args.find((arg) => arg instanceof Error);
      const client = args.find((arg) => arg && typeof arg === 'object' && 'clientId' in arg);
      log(name, {
        client: client?.clientId,
        error: err ? `${err.name}: ${err.message} ${err.error_description ?? ''}`.trim() : undefined,
      });
    });
  }

  return { provider, byLogin, handle: provider.callback() };
}

async function userCodeInputSource(ctx, form, out, err) {
  let message = '';
  if (err && (err.userCode || err.name === 'NoCodeError')) {
    message = '<p id="oidc-error">The code is not valid; enter it again.</p>';
  } else if (err && err.name === 'AbortedError') {
    message = '<p id="oidc-error">The sign-in was cancelled.</p>';
  } else if (err) {
    message = `<p id="oidc-error">The request failed: ${escapeHtml(out?.error_description ?? err.message)}</p>`;
  }
  // `form` holds the user_code field itself (form id op.deviceInputForm).
  ctx.body = page('Device sign-in', `${message}
<p>Enter the code your device shows.</p>
${form}
<button id="oidc-user-code-submit" type="submit" form="op.deviceInputForm">Continue</button>`);
}

async function userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
  ctx.body = page('Confirm the device', `<p>${escapeHtml(client.clientName || client.clientId)} shows the code <code id="oidc-confirm-code">${escapeHtml(userCode)}</code>.</p>
${form}
<button id="oidc-device-confirm" type="submit" form="op.deviceConfirmForm">Continue</button>
<button id="oidc-device-abort" type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>`);
}

async function successSource(ctx) {
  ctx.body = page('Signed in', '<p id="oidc-done" data-oidc-done="device">The device is signed in; this page can be closed.</p>');
}

async function logoutSource(ctx, form) {
  ctx.body = page('Sign out', `<p>Sign out from ${escapeHtml(ctx.host)}?</p>
${form}
<button id="oidc-logout-yes" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button id="oidc-logout-no" type="submit" form="op.logoutForm">No, stay signed in</button>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<p id="oidc-done" data-oidc-done="logout">You are signed out.</p>');
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Error', Object.entries(out)
    .map(([key, value]) => `<p class="oidc-error" data-key="${escapeHtml(key)}">${escapeHtml(key)}: ${escapeHtml(value)}</p>`)
    .join('\n'));
}

function loginPage(uid, details, error) {
  const message = error ? `<p id="oidc-error">${escapeHtml(error)}</p>` : '';
  return page('Sign in', `${message}
<p>Client: <span id="oidc-client">${escapeHtml(details.params.client_id)}</span></p>
<form id="oidc-login" method="post" action="/interaction/${uid}/login" autocomplete="off">
<label>Login <input id="oidc-login-name" name="login" required></label>
<label>Password <input id="oidc-login-password" name="password" type="password" required></label>
<button id="oidc-login-submit" type="submit">Sign in</button>
</form>
<a id="oidc-abort" href="/interaction/${uid}/abort">Cancel</a>`);
}

function consentPage(uid, details) {
  const scopes = [...(details.prompt.details.missingOIDCScope ?? [])];
  for (const more of Object.values(details.prompt.details.missingResourceScopes ?? {})) scopes.push(...more);
  return page('Allow access', `<p>Client <span id="oidc-client">${escapeHtml(details.params.client_id)}</span> asks for:
<span id="oidc-scopes">${escapeHtml(scopes.join(' '))}</span></p>
<form id="oidc-consent" method="post" action="/interaction/${uid}/confirm">
<button id="oidc-consent-submit" type="submit">Allow</button>
</form>
<a id="oidc-abort" href="/interaction/${uid}/abort">Deny</a>`);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

async function interaction(state, req, res, uid, action) {
  const { provider, byLogin } = state;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p class="oidc-error">This sign-in page is out of date.</p>'));
    return;
  }
  if (action === undefined && req.method === 'GET') {
    const html = details.prompt.name === 'login' ? loginPage(uid, details) : consentPage(uid, details);
    send(res, 200, html);
    return;
  }
  if (action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'The person cancelled the sign-in.',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (req.method !== 'POST') {
    send(res, 405, page('Error', '<p class="oidc-error">Method not allowed.</p>'));
    return;
  }
  const form = new URLSearchParams(await readBody(req));
  if (action === 'login') {
    const user = byLogin.get(form.get('login') ?? '');
    if (!user || user.password !== form.get('password')) {
      log('login.refused', { login: form.get('login') });
      send(res, 200, loginPage(uid, details, 'Wrong login or password.'));
      return;
    }
    log('login.success', { login: user.login, sub: user.sub });
    await provider.interactionFinished(req, res, { login: { accountId: user.sub } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  // action === 'confirm'
  const { prompt, params, session } = details;
  const { grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const saved = await grant.save();
  const consent = grantId ? {} : { grantId: saved };
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

async function admin(config, state, req, res, path) {
  if (req.headers['x-test-admin'] !== config.admin_token) {
    send(res, 403, '{"error":"forbidden"}', 'application/json');
    return undefined;
  }
  if (path === 'health' && req.method === 'GET') {
    send(res, 200, '{"ok":true}', 'application/json');
    return undefined;
  }
  if (path === 'config' && req.method === 'POST') {
    const next = JSON.parse(await readBody(req));
    if (next.issuer !== config.issuer || next.port !== config.port) {
      send(res, 400, '{"error":"the issuer and port cannot change"}', 'application/json');
      return undefined;
    }
    const built = buildProvider(next);
    log('config.replaced', { kids: next.keys.map((key) => key.kid), clients: next.clients.map((c) => c.client_id) });
    send(res, 204, '');
    return { config: next, state: built };
  }
  send(res, 404, '{"error":"not found"}', 'application/json');
  return undefined;
}

function main() {
  let config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  let state = buildProvider(config);

  const server = http.createServer(async (req, res) => {
    const current = state;
    const url = new URL(req.url, config.issuer);
    try {
      if (url.pathname.startsWith(ADMIN_PREFIX)) {
        const replaced = await admin(config, current, req, res, url.pathname.slice(ADMIN_PREFIX.length));
        if (replaced) ({ config, state } = replaced);
        return;
      }
      const match = INTERACTION.exec(url.pathname);
      if (match) {
        await interaction(current, req, res, match[1], match[3]);
        return;
      }
      await current.handle(req, res);
    } catch (err) {
      log('request.failed', { path: url.pathname, error: `${err.name}: ${err.message}` });
      if (!res.headersSent) {
        const text = err instanceof errors.SessionNotFound
          ? 'The sign-in has expired or its cookie is missing; start again.'
          : `${err.name}: ${err.message}`;
        send(res, 400, page('Error', `<p class="oidc-error">${escapeHtml(text)}</p>`));
      } else {
        res.end();
      }
    }
  });
  server.keepAliveTimeout = 1000;
  server.listen(config.port, '127.0.0.1', () => {
    log('listening', { issuer: config.issuer, port: config.port });
  });
  const stop = () => {
    log('stopping');
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // Never outlive the test run that started it (a killed pytest leaves no provider behind).
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) stop();
  }, 1000).unref();
}

main();
