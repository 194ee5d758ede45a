// dist/cjs holds CommonJS modules inside a "type": "module" package: this marker tells Node.js so.
import { writeFileSync } from "node:fs";

writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), '{\n  "type": "commonjs"\n}\n');
