# picker: the endpoint picker (ext_proc gRPC on 9002, Prometheus on 9090).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY picker ./picker
RUN pip install --no-cache-dir . && useradd --uid 65532 --no-create-home picker
USER 65532
EXPOSE 9002 9090
ENTRYPOINT ["picker"]
CMD ["serve", "--config", "/etc/picker/picker.yaml"]
