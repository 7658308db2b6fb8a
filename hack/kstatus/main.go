// kstatus-check prints what sigs.k8s.io/cli-utils' kstatus (the library Flux, Helm 4's --wait, kpt
// and Argo CD's generic health rules use) makes of Kubernetes objects: one line per object read from
// stdin (a JSON object, or a JSON list with "items"), "<name>\t<status>\t<message>".
package main

import (
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	var input map[string]interface{}
	data, err := io.ReadAll(os.Stdin)
	if err == nil {
		// Numbers as int64 where they are integers, as unstructured objects need them.
		err = utiljson.Unmarshal(data, &input)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus-check: reading JSON from stdin: %v\n", err)
		os.Exit(2)
	}
	objects := []map[string]interface{}{input}
	if items, ok := input["items"].([]interface{}); ok {
		objects = nil
		for _, item := range items {
			if object, ok := item.(map[string]interface{}); ok {
				objects = append(objects, object)
			}
		}
	}
	for _, object := range objects {
		u := &unstructured.Unstructured{Object: object}
		result, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: %s: %v\n", u.GetName(), err)
			os.Exit(1)
		}
		fmt.Printf("%s\t%s\t%s\n", u.GetName(), result.Status, result.Message)
	}
}
