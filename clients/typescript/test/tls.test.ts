// TLS and mTLS against the in-process gRPC server, with a CA and certificates made by openssl for the test.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { EntitlementsClient, tlsFromFiles, UnavailableError } from "@xsolla-entitlements/client";
import { type FakeServer, rejection, startFakeServer } from "./fake-server.js";

const dir = mkdtempSync(join(tmpdir(), "entitlements-tls-"));
const file = (name: string) => join(dir, name);

function openssl(...args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
}

/** A CA, and a certificate it signs for `name` (`server` for DNS entitlements.test, `client` for mTLS). */
function issue(name: string, subjectAltName: string | undefined): void {
  openssl(
    "req",
    "-new",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-subj",
    `/CN=${name}`,
    "-out",
    `${name}.csr`,
  );
  const extensions = subjectAltName ? ["-extfile", `${name}.ext`] : [];
  if (subjectAltName) {
    writeFileSync(file(`${name}.ext`), `subjectAltName=${subjectAltName}\n`);
  }
  openssl(
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-days",
    "2",
    "-out",
    `${name}.pem`,
    ...extensions,
  );
}

let server: FakeServer;
const clients: EntitlementsClient[] = [];

before(async () => {
  openssl(
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=test-ca",
  );
  issue("server", "DNS:entitlements.test");
  issue("client", undefined);
  // The server asks for a client certificate and refuses connections without one signed by the CA (mTLS).
  server = await startFakeServer(
    { checkEntitlement: () => ({ active: true }) },
    {
      key: readFileSync(file("server.key")),
      cert: readFileSync(file("server.pem")),
      ca: readFileSync(file("ca.pem")),
      requestCert: true,
    },
  );
});

after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

function client(tls: ConstructorParameters<typeof EntitlementsClient>[0]["tls"]): EntitlementsClient {
  const c = new EntitlementsClient({ target: server.target, tls, retry: false, timeoutMs: 3000 });
  clients.push(c);
  return c;
}

describe("TLS", () => {
  test("mTLS with the CA, the client certificate and a server name override", async () => {
    const c = client(
      tlsFromFiles({
        caFile: file("ca.pem"),
        certFile: file("client.pem"),
        keyFile: file("client.key"),
        serverName: "entitlements.test",
      }),
    );
    assert.equal((await c.checkEntitlement({ userId: "u1", sku: "dlc" })).active, true);
  });

  test("without the client certificate the server refuses the connection: UnavailableError", async () => {
    const c = client({ ca: readFileSync(file("ca.pem")), serverName: "entitlements.test" });
    await assert.rejects(c.checkEntitlement({ userId: "u1", sku: "dlc" }), UnavailableError);
  });

  test("a server certificate for another name is refused: UnavailableError", async () => {
    const c = client(
      tlsFromFiles({ caFile: file("ca.pem"), certFile: file("client.pem"), keyFile: file("client.key") }),
    );
    const error = await rejection(c.checkEntitlement({ userId: "u1", sku: "dlc" }));
    assert.ok(error instanceof UnavailableError, String(error));
  });

  test("a server the default roots do not trust is refused: UnavailableError", async () => {
    const c = client(true);
    await assert.rejects(c.checkEntitlement({ userId: "u1", sku: "dlc" }), UnavailableError);
  });
});
