#!/usr/bin/env bash
# Reproduces vendor/ from the lockfile: uPlot's built files and licence,
# exactly the version package-lock.json pins. The Rust build embeds vendor/
# and never needs the network; run this only to change uPlot's version
# (edit package.json, `npm install`, then this), and commit the result.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund >/dev/null
mkdir -p vendor
cp node_modules/uplot/dist/uPlot.iife.min.js vendor/uPlot.iife.min.js
cp node_modules/uplot/dist/uPlot.min.css vendor/uPlot.min.css
cp node_modules/uplot/LICENSE vendor/uPlot.LICENSE
version=$(node -p "require('./node_modules/uplot/package.json').version")
echo "uPlot $version from the npm registry (package-lock.json); MIT licence in uPlot.LICENSE" > vendor/README
echo "vendor/: uPlot $version"
