# The fuseload generation server (`fuseload serve`): Node 20, onnxruntime-node, CPU by default.
#
#   docker build -t fuseload .
#   docker run -p 8787:8787 -v fuseload-cache:/var/cache/fuseload fuseload --origin https://artifacts.example.com
#
# GPU: the CUDA execution provider needs ORT's CUDA provider libraries (downloaded by
# onnxruntime-node's install script when asked) and the CUDA 12 + cuDNN 9 runtime in the image:
#   docker build --build-arg ORT_INSTALL=cuda12 \
#     --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 -t fuseload:cuda .
#   (a non-node base must provide Node 20 on PATH; run with --gpus all)
ARG BASE=node:20-slim
FROM ${BASE}

# skip: no CUDA download (the default everywhere); cuda12: fetch ORT's CUDA 12 provider libraries.
ARG ORT_INSTALL=skip

ENV NODE_ENV=production \
    PIPELINE_STORE=/var/cache/fuseload \
    PORT=8787

WORKDIR /app
COPY package.json package-lock.json ./
# onnxruntime-node is an optional peer of the package (the server needs it, a browser app does
# not): the image makes it a dependency, then installs production dependencies at the locked
# versions. Its install script is skipped (no CUDA download); with ORT_INSTALL=cuda12 it is run
# by name, which downloads the CUDA libraries on any npm version.
RUN node -e "const fs = require('fs'); const p = JSON.parse(fs.readFileSync('package.json')); \
      p.dependencies['onnxruntime-node'] = p.peerDependencies['onnxruntime-node']; delete p.devDependencies; \
      fs.writeFileSync('package.json', JSON.stringify(p, null, 2))" \
 && ONNXRUNTIME_NODE_INSTALL=skip npm install --omit=dev --no-audit --no-fund \
 && if [ "$ORT_INSTALL" != "skip" ]; then \
      ONNXRUNTIME_NODE_INSTALL="$ORT_INSTALL" node node_modules/onnxruntime-node/script/install; \
    fi \
 && npm cache clean --force

COPY bin ./bin
COPY common ./common
COPY tools ./tools

# Non-root, owning only the cache volume.
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin fuseload \
 && mkdir -p "$PIPELINE_STORE" && chown fuseload "$PIPELINE_STORE"
USER fuseload
VOLUME ["/var/cache/fuseload"]
EXPOSE 8787

HEALTHCHECK --interval=30s --timeout=5s CMD node -e "fetch('http://127.0.0.1:'+process.env.PORT+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "bin/fuseload.js", "serve", "--host", "0.0.0.0"]
# The origin comes from FUSELOAD_ORIGIN or the arguments given to `docker run`.
CMD []
