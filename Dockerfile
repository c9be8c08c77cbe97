# Placeholder: the service image arrives with the deployment issue (#4).
FROM python:3.11-slim
CMD ["python", "-c", "print('not built yet: see README.md')"]
