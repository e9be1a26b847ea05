//! The compatibility table's entries: every field Ambit ignores or does not enforce, and the
//! notes on fields it implements differently from Istio. A field no entry names is
//! implemented as Istio documents it.

use super::Support;

/// A field, or every field under it, by path: `spec.http[].retries.backoff`; `**` stands for
/// any number of fields (DestinationRule's traffic policy sits at four depths).
pub(super) struct Entry {
    pub(super) kind: &'static str,
    pub(super) pattern: &'static str,
    pub(super) support: Support,
}

const fn ignored(kind: &'static str, pattern: &'static str, why: &'static str) -> Entry {
    Entry {
        kind,
        pattern,
        support: Support::Ignored(why),
    }
}

const fn closed(kind: &'static str, pattern: &'static str, why: &'static str) -> Entry {
    Entry {
        kind,
        pattern,
        support: Support::FailsClosed(why),
    }
}

const fn noted(kind: &'static str, pattern: &'static str, note: &'static str) -> Entry {
    Entry {
        kind,
        pattern,
        support: Support::Implemented(Some(note)),
    }
}

const VS: &str = "VirtualService";
const DR: &str = "DestinationRule";
const GW: &str = "Gateway";
const SE: &str = "ServiceEntry";
const PA: &str = "PeerAuthentication";
const AP: &str = "AuthorizationPolicy";

/// The first entry that fits a field decides; fields no entry fits are implemented.
pub(super) const TABLE: &[Entry] = &[
    // VirtualService
    ignored(
        VS,
        "spec.exportTo",
        "a VirtualService applies to clients in every namespace",
    ),
    ignored(
        VS,
        "spec.http[].match[].statPrefix",
        "no per-match statistics prefix",
    ),
    noted(
        VS,
        "spec.http[].match[].name",
        "names the route in logs; no statistics of its own",
    ),
    noted(
        VS,
        "spec.http[].mirrorPercent",
        "deprecated: read as mirrorPercentage when that is unset",
    ),
    noted(
        VS,
        "spec.http[].mirror_percent",
        "deprecated: read as mirrorPercentage when that is unset",
    ),
    noted(
        VS,
        "spec.http[].fault.delay.percent",
        "deprecated: read as percentage when that is unset",
    ),
    noted(
        VS,
        "spec.http[].fault.abort.percent",
        "removed from Istio's API; read as percentage when that is unset",
    ),
    noted(
        VS,
        "spec.http[].corsPolicy.allowOrigin",
        "deprecated: exact origins, when allowOrigins is empty",
    ),
    ignored(
        VS,
        "spec.http[].directResponse.body.bytes",
        "a base64 body is sent empty; use body.string",
    ),
    ignored(
        VS,
        "spec.http[].retries.retryRemoteLocalities",
        "a retry goes to whichever endpoint the load balancer picks",
    ),
    ignored(
        VS,
        "spec.http[].retries.backoff",
        "retries are sent at once, without back-off",
    ),
    ignored(
        VS,
        "spec.http[].retries.retryIgnorePreviousHosts",
        "a retry may go to the endpoint that failed",
    ),
    noted(
        VS,
        "spec.http[].retries.retryOn",
        "5xx, gateway-error, connect-failure, refused-stream, retriable-4xx, reset, and gRPC status names; other values are ignored",
    ),
    ignored(
        VS,
        "spec.http[].fault.delay.exponentialDelay",
        "only fixedDelay is injected",
    ),
    ignored(
        VS,
        "spec.http[].fault.abort.http2Error",
        "only httpStatus and grpcStatus aborts are injected",
    ),
    ignored(
        VS,
        "spec.http[].redirect.derivePort",
        "a redirect keeps the port it names, else the default",
    ),
    ignored(VS, "spec.http[].redirect.prefixRewrite", "use redirect.uri"),
    ignored(
        VS,
        "spec.tcp[].match[].sourceSubnet",
        "hidden in Istio's API; use sourceLabels",
    ),
    // DestinationRule
    ignored(
        DR,
        "spec.exportTo",
        "a DestinationRule applies to clients in every namespace",
    ),
    ignored(
        DR,
        "spec.workloadSelector",
        "the rule is not applied: Istio scopes it to the selected workloads' own proxies, and a waypoint serves every client",
    ),
    ignored(
        DR,
        "spec.**.connectionPool.tcp.connectTimeout",
        "connects time out after 5 s",
    ),
    ignored(
        DR,
        "spec.**.connectionPool.tcp.idleTimeout",
        "connections carried as TCP are not closed for idleness",
    ),
    ignored(
        DR,
        "spec.**.connectionPool.tcp.maxConnectionDuration",
        "connections are not closed for age",
    ),
    ignored(
        DR,
        "spec.**.connectionPool.tcp.tcpKeepalive",
        "the kernel's keepalive settings apply",
    ),
    ignored(
        DR,
        "spec.**.connectionPool.http.idleTimeout",
        "idle upstream connections are kept",
    ),
    ignored(
        DR,
        "spec.**.connectionPool.http.maxConcurrentStreams",
        "up to 100 streams share a connection",
    ),
    ignored(
        DR,
        "spec.**.connectionPool.http.h2UpgradePolicy",
        "requests go upstream in the protocol they came in",
    ),
    ignored(
        DR,
        "spec.**.connectionPool.http.useClientProtocol",
        "requests go upstream in the protocol they came in",
    ),
    ignored(
        DR,
        "spec.**.connectionPool.http.http2KeepAlive",
        "no HTTP/2 keepalive pings upstream",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.consistentHash.httpCookie.path",
        "no cookie is issued; requests that carry it are hashed on it",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.consistentHash.httpCookie.ttl",
        "no cookie is issued; requests that carry it are hashed on it",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.consistentHash.httpCookie.attributes",
        "no cookie is issued",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.consistentHash.minimumRingSize",
        "jump consistent hashing has no ring or table to size",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.consistentHash.ringHash",
        "jump consistent hashing has no ring or table to size",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.consistentHash.maglev",
        "jump consistent hashing has no ring or table to size",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.warmupDurationSecs",
        "new endpoints get their full share at once",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.warmup",
        "new endpoints get their full share at once",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.backendUtilization",
        "no load reports from endpoints",
    ),
    ignored(
        DR,
        "spec.**.loadBalancer.zoneAwareLbSetting",
        "localityLbSetting decides locality",
    ),
    noted(
        DR,
        "spec.**.loadBalancer.simple",
        "LEAST_CONN is LEAST_REQUEST, as in Istio; PASSTHROUGH is LEAST_REQUEST",
    ),
    ignored(
        DR,
        "spec.**.outlierDetection.interval",
        "ejection is decided on every response",
    ),
    ignored(
        DR,
        "spec.**.outlierDetection.minHealthPercent",
        "ejected endpoints stay out however few remain",
    ),
    ignored(
        DR,
        "spec.**.outlierDetection.consecutiveErrors",
        "deprecated; Istio ignores it too (use consecutive5xxErrors)",
    ),
    ignored(
        DR,
        "spec.**.outlierDetection.consecutiveLocalOriginFailures",
        "local-origin failures are not counted apart",
    ),
    ignored(
        DR,
        "spec.**.outlierDetection.outlierDetectionHttpErrorCodes",
        "5xx answers count as errors",
    ),
    ignored(
        DR,
        "spec.**.outlierDetection.splitExternalLocalOriginErrors",
        "local-origin failures are not counted apart",
    ),
    ignored(
        DR,
        "spec.**.proxyProtocol",
        "no PROXY protocol header upstream",
    ),
    ignored(
        DR,
        "spec.**.retryBudget",
        "retries are limited by attempts and maxRetries",
    ),
    ignored(DR, "spec.**.tunnel", "no upstream tunnel"),
    noted(
        DR,
        "spec.**.tls.mode",
        "ISTIO_MUTUAL and DISABLE: the mesh's own mutual TLS (HBONE); SIMPLE and MUTUAL fail closed",
    ),
    closed(
        DR,
        "spec.**.tls",
        "Ambit neither originates TLS nor checks servers beyond their mesh identity: requests to the host are refused (503) rather than sent with less protection than asked",
    ),
    // Gateway
    noted(
        GW,
        "spec.selector",
        "istio: ingressgateway gets an ingress the controller runs; other selectors are served by the mesh-waypoint --ingress-gateway that names the Gateway",
    ),
    ignored(
        GW,
        "spec.servers[].bind",
        "the ingress listens on every address",
    ),
    ignored(
        GW,
        "spec.servers[].defaultEndpoint",
        "a sidecar's field; the ingress routes by VirtualService",
    ),
    closed(
        GW,
        "spec.servers[].tls.maxProtocolVersion",
        "the server is not opened",
    ),
    closed(
        GW,
        "spec.servers[].tls.cipherSuites",
        "the server is not opened",
    ),
    closed(
        GW,
        "spec.servers[].tls.ecdhCurves",
        "the server is not opened",
    ),
    closed(
        GW,
        "spec.servers[].tls.verifyCertificateSpki",
        "the server is not opened",
    ),
    closed(
        GW,
        "spec.servers[].tls.verifyCertificateHash",
        "the server is not opened",
    ),
    closed(GW, "spec.servers[].tls.caCrl", "the server is not opened"),
    closed(
        GW,
        "spec.servers[].tls.caCertCredentialName",
        "the server is not opened",
    ),
    closed(
        GW,
        "spec.servers[].tls.credentialNames",
        "the server is not opened",
    ),
    closed(
        GW,
        "spec.servers[].tls.tlsCertificates",
        "the server is not opened",
    ),
    closed(
        GW,
        "spec.servers[].tls.insecureSkipVerify",
        "the server is not opened",
    ),
    noted(
        GW,
        "spec.servers[].tls.mode",
        "AUTO_PASSTHROUGH and ISTIO_MUTUAL are refused (the server is not opened)",
    ),
    // ServiceEntry
    noted(SE, "spec.hosts", "makes VirtualService destinations known"),
    ignored(
        SE,
        "spec.**",
        "Ambit does not route to ServiceEntry hosts yet: traffic to them is refused (503 NC)",
    ),
    // PeerAuthentication
    noted(
        PA,
        "spec.mtls.mode",
        "DISABLE is PERMISSIVE: the mesh never turns mutual TLS off",
    ),
    noted(
        PA,
        "spec.portLevelMtls",
        "per port of the selected workloads; needs a selector, as in Istio",
    ),
    // AuthorizationPolicy
    noted(
        AP,
        "spec.action",
        "AUDIT has no effect on access (no audit sink)",
    ),
    closed(
        AP,
        "spec.provider",
        "CUSTOM policies deny what they select: Ambit has no external authorizer",
    ),
    closed(
        AP,
        "spec.rules[].from[].source.requestPrincipals",
        "Ambit does not validate JWTs: an ALLOW rule with it never matches, a DENY rule always does",
    ),
    closed(
        AP,
        "spec.rules[].from[].source.notRequestPrincipals",
        "Ambit does not validate JWTs: an ALLOW rule with it never matches, a DENY rule always does",
    ),
    noted(
        AP,
        "spec.rules[].from[].source.remoteIpBlocks",
        "the connection's peer address (X-Forwarded-For and PROXY protocol are not read), as Istio without numTrustedProxies",
    ),
    noted(
        AP,
        "spec.rules[].from[].source.notRemoteIpBlocks",
        "the connection's peer address, as remoteIpBlocks",
    ),
    noted(
        AP,
        "spec.rules[].to[].operation",
        "methods, paths and hosts at a waypoint; at a node they fail closed (ALLOW never matches, DENY always does)",
    ),
    noted(
        AP,
        "spec.rules[].when[].key",
        "request.headers[...], source.ip, remote.ip, source.namespace, source.principal, destination.port at a waypoint; other keys, and any at a node, fail closed",
    ),
    noted(
        AP,
        "spec.targetRef",
        "Gateway and Service targets in the policy's namespace; other targets apply to the whole namespace at its nodes, failing closed",
    ),
    noted(
        AP,
        "spec.targetRefs",
        "Gateway and Service targets in the policy's namespace; other targets apply to the whole namespace at its nodes, failing closed",
    ),
];
