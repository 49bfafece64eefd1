// Command csi-registrar registers a CSI driver with the kubelet, for the lab's offline kind
// path only: the upstream node-driver-registrar's module is refused by the Go module proxy these
// machines reach. It takes the same two flags as the upstream one the manifests use, asks the
// driver for its name over the CSI Identity service, then serves the kubelet's plugin
// registration service (pluginregistration/v1) on <registration dir>/<name>-reg.sock and keeps
// serving: the kubelet's plugin watcher finds the socket, calls GetInfo, and reports back with
// NotifyRegistrationStatus.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registration.UnimplementedRegistrationServer
	name     string
	endpoint string
}

func (r *registrar) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if s.PluginRegistered {
		log.Printf("the kubelet registered %s at %s", r.name, r.endpoint)
	} else {
		log.Printf("the kubelet refused %s: %s", r.name, s.Error)
	}
	return &registration.RegistrationStatusResponse{}, nil
}

// driverName asks the CSI driver at address (a Unix socket path) for its name, retrying until
// it answers or the context ends.
func driverName(ctx context.Context, address string) (string, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	identity := csi.NewIdentityClient(conn)
	for {
		call, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := identity.GetPluginInfo(call, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil && info.GetName() != "" {
			return info.GetName(), nil
		}
		log.Printf("waiting for the CSI driver at %s: %v", address, err)
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the CSI driver at %s did not answer: %w", address, err)
		case <-time.After(time.Second):
		}
	}
}

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the CSI driver's socket, as this container sees it")
	kubeletPath := flag.String("kubelet-registration-path", "", "the CSI driver's socket, as the kubelet sees it on the node")
	registrationDir := flag.String("plugin-registration-path", "/registration", "the kubelet's plugin registration directory, as mounted")
	flag.Parse()
	if *kubeletPath == "" {
		log.Fatal("-kubelet-registration-path is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	waiting, cancel := context.WithTimeout(ctx, 2*time.Minute)
	name, err := driverName(waiting, *csiAddress)
	cancel()
	if err != nil {
		log.Fatal(err)
	}
	socket := filepath.Join(*registrationDir, name+"-reg.sock")
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		log.Fatalf("remove the old %s: %v", socket, err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listen on %s: %v", socket, err)
	}
	server := grpc.NewServer()
	registration.RegisterRegistrationServer(server, &registrar{name: name, endpoint: *kubeletPath})
	go func() {
		<-ctx.Done()
		server.GracefulStop()
		_ = os.Remove(socket)
	}()
	log.Printf("registering CSI driver %s (kubelet endpoint %s) through %s", name, *kubeletPath, socket)
	if err := server.Serve(listener); err != nil {
		log.Fatal(err)
	}
}
