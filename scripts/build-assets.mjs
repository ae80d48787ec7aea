// Builds the portal's static assets into build/static from the npm packages:
// the compiled stylesheet (GOV.UK Frontend plus the portal's own styles),
// GOV.UK Frontend's JavaScript bundle and the images its CSS refers to.
import { cpSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as sass from "sass";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const govuk = join(root, "node_modules", "govuk-frontend", "dist", "govuk");
const out = join(root, "build", "static");

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "portal"), { recursive: true });
mkdirSync(join(out, "govuk", "assets"), { recursive: true });

const css = sass.compile(join(root, "assets", "scss", "portal.scss"), {
  loadPaths: [join(root, "node_modules")],
  style: "compressed",
  quietDeps: true,
  silenceDeprecations: ["import", "global-builtin", "color-functions", "slash-div"],
});
writeFileSync(join(out, "portal", "portal.css"), css.css);

cpSync(join(govuk, "all.bundle.js"), join(out, "govuk", "all.bundle.js"));
// The bundle names its source map; the hashed static files storage follows that reference.
cpSync(join(govuk, "all.bundle.js.map"), join(out, "govuk", "all.bundle.js.map"));
cpSync(join(govuk, "assets", "images"), join(out, "govuk", "assets", "images"), { recursive: true });

console.log(`Built assets into ${out}`);
