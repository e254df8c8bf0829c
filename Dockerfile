# The `traum` server with its web client. Build: docker build -t traum .
# (or docker compose build)
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends npm libopus-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN bash scripts/setup-web.sh && bash client/build.sh
RUN cargo build --release -p traum-server --bin traum

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libopus0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/traum /usr/local/bin/traum
COPY --from=build /src/client/dist /opt/traum/client
# GraphiQL's four files (pinned npm packages), served by traum itself at /graphiql/.
COPY --from=build /src/server/graphiql/node_modules/graphiql/graphiql.min.js \
     /src/server/graphiql/node_modules/graphiql/graphiql.min.css \
     /opt/traum/graphiql/graphiql/
COPY --from=build /src/server/graphiql/node_modules/react/umd/react.production.min.js \
     /opt/traum/graphiql/react/umd/
COPY --from=build /src/server/graphiql/node_modules/react-dom/umd/react-dom.production.min.js \
     /opt/traum/graphiql/react-dom/umd/
WORKDIR /opt/traum
ENV TRAUM_BIND=0.0.0.0:8000 \
    TRAUM_DATA_DIR=/data \
    TRAUM_CLIENT_DIR=/opt/traum/client \
    TRAUM_GRAPHIQL_DIR=/opt/traum/graphiql \
    HF_HOME=/models/hf
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["traum"]
CMD ["serve"]
