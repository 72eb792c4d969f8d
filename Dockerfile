# syntax=docker/dockerfile:1
# fastgw: build the wheel (compiles the Cython hot path), then a slim non-root runtime.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md NOTICE ./
COPY requirements/ requirements/
COPY fastgw/ fastgw/
RUN PIP_CONSTRAINT=requirements/constraints.txt pip wheel --no-cache-dir --wheel-dir /wheels . \
 && python -c "import zipfile, glob; w = glob.glob('/wheels/fastgw-*.whl')[0]; \
names = zipfile.ZipFile(w).namelist(); \
assert any(n.startswith('fastgw/_core') and n.endswith('.so') for n in names), 'hot path not compiled'; \
assert 'fastgw/engines/redis/__init__.py' in names and 'fastgw/admin/static/index.html' in names, 'package data missing'"

FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fastgw
COPY NOTICE /usr/share/doc/fastgw/NOTICE
USER fastgw
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["fastgw", "serve"]
